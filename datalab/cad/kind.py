"""The CAD kind: STEP, STL and DXF files checked in a sandbox, one curated row per file, the files kept.

What differs from the time series, in one place: the staged files of a push
are parsed together (each in its own sandboxed process) and no raw table is
written at push; curation (``datalab.cad.curate``) makes one row per file
in the contract's canonical length unit; the suite is
``datalab.cad.suite.derive_cad_suite``; a published version carries the
original files and thumbnails (``manifest.sections["cad"]``), pulled beside its table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from datalab.cad import check, curate, features, publish, suite
from datalab.config import Settings
from datalab.contracts.contract import Contract
from datalab.contracts.policy import Policy
from datalab.intake.formats import Sniffed
from datalab.intake.receipts import FileReceipt
from datalab.kinds import sections
from datalab.kinds.base import Attached, CuratedSchema, Section
from datalab.quality.expectations import ExpectationSpec
from datalab.store.manifest import Manifest


class CadKind:
    name = "cad"
    asset_factory = "cad"
    manifest_key: str | None = "cad"
    validate_in_chunks = False
    datasheet_facts = False
    # One text column lists each file's flags (datalab.cad.features); curation counts them per word.
    flag_words: Mapping[str, str] = MappingProxyType(
        {"flags": "file flags (words such as unit_unknown, open_mesh, no_solid; counted per word)"})

    @property
    def section(self) -> Section:
        return sections.get(self.name)

    def check_staged(self, contract: Contract, staged: list[Any], s: Settings) -> list[FileReceipt] | None:
        # parsed in parallel, each in its own sandboxed process
        return check.check_staged(contract, list(staged), s)

    def raw_writer(self, contract: Contract, delivery_id: str, s: Settings) -> Any | None:
        return None  # the parse facts are cached by the check; the raw step reads them (read_raw)

    def read_file(self, contract: Contract, name: str, path: Path, sniffed: Sniffed, sink: Any,
                  side: Any) -> tuple[int, list[str]]:
        return 0, [f"{name}: a CAD file is checked with its delivery (datalab.cad.check), not read on its own"]

    def read_raw(self, contract: Contract, delivery_id: str, s: Settings | None = None) -> dict[str, Any]:
        return curate.ingest(contract, delivery_id, s)

    def curate(self, contract: Contract, delivery_id: str, s: Settings | None = None,
               engine: Any = None) -> curate.CadCurationStats:
        return curate.curate_delivery(contract, delivery_id, s)

    def curated_path(self, contract: Contract, delivery_id: str, s: Settings) -> Path:
        return curate.curated_path(contract, delivery_id, s)

    def curated_schema(self, contract: Contract) -> CuratedSchema:
        return CuratedSchema(columns=tuple(features.SCHEMA), flags=tuple(self.flag_words))

    def sample(self, contract: Contract, out_dir: Path, rows: int, *, seed: int = 0, files: int = 1,
               fmt: str = "csv", clean: bool = False, start: datetime | None = None, late: int = 0,
               stem: str | None = None) -> list[Path]:
        raise ValueError(f"{contract.id}: only time-series contracts can be generated, not {contract.kind} "
                         "(a CAD contract takes real files: see ../shared/realdata/cad and docs/cad.md)")

    def suite(self, contract: Contract) -> list[ExpectationSpec]:
        return suite.derive_cad_suite(contract)

    def attach_files(self, dataset: str, included: list[dict[str, Any]], contracts: dict[str, Any],
                     policy: Policy, s: Settings) -> dict[str, Any] | None:
        return publish.attach_files(dataset, included, contracts, policy, s)

    def card_section(self, manifest: Manifest) -> list[str]:
        return publish.card_section(manifest)

    def pull_files(self, manifest: Manifest, out: Path, s: Settings,
                   copy: Callable[[Path, Path, str], None]) -> list[Path]:
        return publish.pull_files(manifest, out, s, copy)

    def attached(self, manifest: Manifest) -> list[Attached]:
        """The original files and thumbnails, laid out as a local pull lays them out (``files/``, ``files/thumbs/``)."""
        out = []
        for i, f in enumerate((manifest.section(self.manifest_key) or {}).get("files") or []):
            out.append(Attached(f["path"], f["sha256"], f.get("bytes", 0), "CAD file", f"cad-files/{i}",
                                f"files/{publish.pulled_name(f)}", name=f["name"]))
            if f.get("thumbnail"):
                t = f["thumbnail"]
                out.append(Attached(t["path"], t["sha256"], 0, "thumbnail", f"cad-files/{i}",
                                    f"files/thumbs/{f['sha256']}.png", {"thumbnail": "true"}, listed=False,
                                    name=f"{f['sha256']}.png"))
        return out

    def download_folders(self, manifest: Manifest) -> list[str]:
        return ["files/thumbs"]
