"""What a kind of data is to the core: the ``Kind`` protocol and the small records it hands back.

Below the registry (``datalab.kinds``), so that the kinds' implementations
can name these types without importing the registry that loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from datalab.kinds.sections import Section

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datalab.config import Settings
    from datalab.contracts.contract import Contract
    from datalab.contracts.policy import Policy
    from datalab.intake.formats import Sniffed
    from datalab.intake.receipts import FileReceipt
    from datalab.quality.expectations import ExpectationSpec
    from datalab.store.manifest import Manifest

# (name, path, sha256, size, over_limit) of one staged file of a push
Staged = tuple[str, Path, str, int, bool]


@dataclass(frozen=True)
class CuratedSchema:
    """The curated table of a contract: its columns in order, and those that carry curation's flags.

    Declared by the kind, once: a time series has one Boolean column per flag;
    a CAD table lists each file's flags in one text column.
    """

    columns: tuple[str, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Attached:
    """One file a kind attaches to a published version besides its table.

    ``path``: in the lab's store, relative to its home; ``what``: its name for
    people (``CAD file``); ``route``: where a remote pull fetches it, below the
    version's URL (``cad-files/0``); ``dest``: where a pull puts it, relative
    to the pull's folder (the card links it there); ``params``: query
    parameters besides the purpose; ``listed``: among the files a pull
    returns (a thumbnail is not); ``name``: the name it was delivered under.
    """

    path: str
    sha256: str
    size: int
    what: str
    route: str
    dest: str
    params: dict[str, str] | None = None
    listed: bool = True
    name: str = ""


class CurationRecord(Protocol):
    """What a kind's curation of one delivery counted (``Kind.curate``): a typed record of the kind's own.

    The core reads only the rows in and out; ``to_dict()`` is what the
    catalog stores under ``stats.curated`` and the manifest copies, so the
    stored JSON stays a plain dict whatever the record's type
    (``datalab.timeseries.stats.CurationStats``, ``datalab.cad.curate.CadCurationStats``).
    """

    @property
    def rows_in(self) -> int: ...

    @property
    def rows_out(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class Kind(Protocol):
    """What the core asks of a kind of data. Implementations: ``datalab.timeseries.kind``, ``datalab.cad.kind``."""

    name: str
    # The name the Dagster layer registers this kind's asset factory under (assets/registry.py).
    asset_factory: str
    # The manifest key of what this kind attaches to a published version (None: nothing).
    manifest_key: str | None
    # The GX runner may validate a whole Parquet file in row chunks (when every expectation merges).
    validate_in_chunks: bool
    # The datasheet computes facts over the rows (coverage, sensors, plots); otherwise the card alone.
    datasheet_facts: bool
    # The curated table's flag columns (``CuratedSchema.flags``, in order) and what each means for people:
    # the datasheet's headers and the manifest's curation counts read them here, not from a copy of their own.
    flag_words: Mapping[str, str]

    @property
    def section(self) -> Section:
        """The kind's part of a contract (datalab.kinds.sections)."""
        ...

    # landing
    def check_staged(self, contract: Contract, staged: list[Staged], s: Settings) -> list[FileReceipt] | None:
        """Receipts of all staged files checked together, or None to read each file (``read_file``)."""
        ...

    def raw_writer(self, contract: Contract, delivery_id: str, s: Settings) -> Any | None:
        """Where ``read_file`` writes the raw table while the push checks the files (None: no raw table at push)."""
        ...

    def read_file(self, contract: Contract, name: str, path: Path, sniffed: Sniffed, sink: Any,
                  side: Any) -> tuple[int, list[str]]:
        """Read one staged file (its rows to ``sink`` if given): its row count and problems."""
        ...

    # raw and curated tables
    def read_raw(self, contract: Contract, delivery_id: str, s: Settings | None = None) -> dict[str, Any]:
        """Build the raw table of an accepted delivery; its statistics."""
        ...

    def curate(self, contract: Contract, delivery_id: str, s: Settings | None = None, engine: Any = None) -> CurationRecord:
        """Curate one delivery; its statistics (stored as their ``to_dict()``)."""
        ...

    def curated_path(self, contract: Contract, delivery_id: str, s: Settings) -> Path:
        ...

    def curated_schema(self, contract: Contract) -> CuratedSchema:
        ...

    def sample(self, contract: Contract, out_dir: Path, rows: int, *, seed: int = 0, files: int = 1,
               fmt: str = "csv", clean: bool = False, start: datetime | None = None, late: int = 0,
               stem: str | None = None) -> list[Path]:
        """Sample delivery files for ``contract`` with the kind's real-world defects (``clean``: none;
        ``late``: rows that arrive late), for ``datalab sample``, the demo and benchmarks. A kind
        that cannot generate its data raises ``ValueError`` saying so."""
        ...

    # validation
    def suite(self, contract: Contract) -> list[ExpectationSpec]:
        """The expectations derived from the contract for the curated table."""
        ...

    # publish, card, pull
    def attach_files(self, dataset: str, included: list[dict[str, Any]], contracts: dict[str, Any],
                     policy: Policy, s: Settings) -> dict[str, Any] | None:
        """Store what a version of ``dataset`` carries besides its table; the manifest's section describing it
        (publish puts it under ``manifest_key``), or None."""
        ...

    def card_section(self, manifest: Manifest) -> list[str]:
        """The card's lines on how the version's data was prepared (markdown)."""
        ...

    def pull_files(self, manifest: Manifest, out: Path, s: Settings, copy: Callable[[Path, Path, str], None]) -> list[Path]:
        """Copy the attached files of a version into a local pull's folder ``out``."""
        ...

    def attached(self, manifest: Manifest) -> list[Attached]:
        """The files attached to a version: verified by ``datalab verify``, fetched by a remote pull (laid out as ``pull_files``)."""
        ...

    def download_folders(self, manifest: Manifest) -> list[str]:
        """Folders (relative to the pull's) a remote pull of the version makes even when empty, as ``pull_files`` does."""
        ...
