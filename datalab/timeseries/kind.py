"""The time-series kind: sensor readings read into a long table, curated, validated and published.

What differs from other kinds, in one place: each staged file is read by
the text/measurement readers straight into the raw long table while the push
checks it; curation is the Polars plan of ``datalab.timeseries.curate``; the suite is
``datalab.timeseries.suite.derive_suite``; the curated columns are the base
columns, the contract's attributes and the curation flags; the card's
section is the preparation table (``datalab.timeseries.card``); a version carries no files besides its
table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from datalab.config import Settings
from datalab.contracts.contract import Contract
from datalab.contracts.policy import Policy
from datalab.intake.formats import Sniffed
from datalab.intake.receipts import FileReceipt
from datalab.kinds import sections
from datalab.kinds.base import Attached, CuratedSchema, Section
from datalab.quality.expectations import ExpectationSpec
from datalab.store.manifest import Manifest
from datalab.timeseries import curate, ingest, sample, schema
from datalab.timeseries import suite as ts_suite
from datalab.timeseries.card import preparation_section
from datalab.timeseries.stats import CurationStats


class TimeseriesKind:
    name = "timeseries"
    asset_factory = "timeseries"
    manifest_key: str | None = None
    validate_in_chunks = True
    datasheet_facts = True
    flag_words = schema.FLAG_WORDS  # one Boolean column per flag (datalab/timeseries/schema.py)

    @property
    def section(self) -> Section:
        return sections.get(self.name)

    def check_staged(self, contract: Contract, staged: list[Any], s: Settings) -> list[FileReceipt] | None:
        return None  # each file is read on its own, into the raw table (read_file)

    def raw_writer(self, contract: Contract, delivery_id: str, s: Settings) -> Any | None:
        return ingest.RawWriter(contract, delivery_id, s)

    def read_file(self, contract: Contract, name: str, path: Path, sniffed: Sniffed, sink: Any,
                  side: Any) -> tuple[int, list[str]]:
        from datalab.timeseries.readers import TimeseriesReader

        reader = TimeseriesReader(contract, path, name, sniffed)
        reader.side = side
        for batch in reader.batches():
            if sink is not None and not reader.problems:
                sink.write(batch)
        return reader.records, reader.problems.reasons()

    def read_raw(self, contract: Contract, delivery_id: str, s: Settings | None = None) -> dict[str, Any]:
        return ingest.ingest_raw(contract, delivery_id, s)

    def curate(self, contract: Contract, delivery_id: str, s: Settings | None = None,
               engine: Any = None) -> CurationStats:
        return curate.curate_delivery(contract, delivery_id, engine, s)

    def curated_path(self, contract: Contract, delivery_id: str, s: Settings) -> Path:
        return curate.curated_path(contract, delivery_id, s)

    def curated_schema(self, contract: Contract) -> CuratedSchema:
        return CuratedSchema(columns=(*schema.columns([a.name for a in contract.attributes]), *curate.PROVENANCE),
                             flags=schema.FLAG_COLUMNS)

    def sample(self, contract: Contract, out_dir: Path, rows: int, *, seed: int = 0, files: int = 1,
               fmt: str = "csv", clean: bool = False, start: datetime | None = None, late: int = 0,
               stem: str | None = None) -> list[Path]:
        defects = sample.Defects.none() if clean else (sample.Defects(late=late) if late else None)
        return sample.cli_generate(contract, rows, seed, out_dir, files=files, fmt=fmt, defects=defects,
                                   start=start, stem=stem)

    def suite(self, contract: Contract) -> list[ExpectationSpec]:
        return ts_suite.derive_suite(contract)

    def attach_files(self, dataset: str, included: list[dict[str, Any]], contracts: dict[str, Any],
                     policy: Policy, s: Settings) -> dict[str, Any] | None:
        return None  # the table is the whole version

    def card_section(self, manifest: Manifest) -> list[str]:
        return preparation_section(manifest)

    def pull_files(self, manifest: Manifest, out: Path, s: Settings,
                   copy: Callable[[Path, Path, str], None]) -> list[Path]:
        return []

    def attached(self, manifest: Manifest) -> list[Attached]:
        return []

    def download_folders(self, manifest: Manifest) -> list[str]:
        return []
