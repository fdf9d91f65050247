"""The manifest of a published version, as a typed record.

A manifest is written once, at publish, as ``manifest.json`` beside the
version's card, and read by everything that serves the version afterwards:
pull, the card and datasheet, sovereignty checks, retention and withdrawal,
the service, the federation. It travelled as a dict, so a misspelt key was a
``KeyError`` far from where the manifest was made, and nobody could see what
a manifest holds without reading ``publish``. ``Manifest`` names every part;
``Manifest.from_dict`` checks a manifest read from disk or from a peer and
says which field is missing or of the wrong type; ``to_dict`` gives back the
JSON exactly as it was read (same keys, same order), so the files on disk,
the checksums over them and the answers of the service do not change.

The parts that are free-form by design stay dicts: ``schema`` (column to
type), ``curation`` and ``validation`` (per delivery, what the kind's
curation and the suite reported), ``policy`` (``Policy.to_dict``),
``sovereignty`` (the publish plan's decisions) and the kinds' own sections
(``sections``, under the kind's ``manifest_key``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from datalab.errors import IntegrityError

# The keys of a manifest in the order publish writes them; a kind's section
# (its ``manifest_key``), then the datasheet's summary follow.
CORE_KEYS: tuple[str, ...] = (
    "dataset", "title", "description", "version", "version_reason", "created_at", "site", "table",
    "snapshot_id", "schema", "rows", "rows_per_contract", "files", "lineage", "curation", "validation",
    "policy", "sovereignty", "seconds",
)
# Keys written after publish: the datasheet's summary, the catalog's status
# (added when read), a federated replica's agreement, a withdrawal.
LATER_KEYS: tuple[str, ...] = ("datasheet", "status", "replica", "withdrawn")


def _need(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise IntegrityError(f"{where}: field {key!r} is missing")
    v = d[key]
    if not isinstance(v, typ):
        names = " or ".join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
        raise IntegrityError(f"{where}: field {key!r} must be {names}, not {type(v).__name__}")
    return v


def _obj(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise IntegrityError(f"{where} must be an object")
    return d


@dataclass(frozen=True)
class SiteRef:
    """The site a version was published to."""

    name: str
    country: str
    operator: str

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest.site") -> SiteRef:
        d = _obj(d, where)
        return cls(_need(d, "name", str, where), _need(d, "country", str, where), str(d.get("operator") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "country": self.country, "operator": self.operator}


@dataclass(frozen=True)
class DataFile:
    """One Parquet data file of the version's Iceberg table: where it lies under the lab's home, and its checksum."""

    path: str
    sha256: str
    bytes: int
    rows: int

    @classmethod
    def from_dict(cls, d: Any, where: str) -> DataFile:
        d = _obj(d, where)
        return cls(_need(d, "path", str, where), _need(d, "sha256", str, where), int(_need(d, "bytes", int, where)),
                   int(d.get("rows") or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes, "rows": self.rows}


@dataclass(frozen=True)
class LineageContract:
    """A contract whose deliveries the version holds, at the version it had then."""

    id: str
    version: str
    tenant: str
    path: str

    @classmethod
    def from_dict(cls, d: Any, where: str) -> LineageContract:
        d = _obj(d, where)
        return cls(_need(d, "id", str, where), str(d.get("version") or ""), _need(d, "tenant", str, where),
                   str(d.get("path") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "tenant": self.tenant, "path": self.path}


@dataclass(frozen=True)
class Excluded:
    """A delivery left out of the version, and why (the card lists them)."""

    delivery_id: str
    contract: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "contract": self.contract, "reason": self.reason}


@dataclass(frozen=True)
class Lineage:
    """Where the version's rows came from: contracts, included deliveries, excluded deliveries."""

    contracts: tuple[LineageContract, ...]
    deliveries: tuple[str, ...]
    excluded: tuple[Excluded, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest.lineage") -> Lineage:
        d = _obj(d, where)
        cs = d.get("contracts") or []
        ds = d.get("deliveries") or []
        ex = d.get("excluded") or []
        return cls(
            tuple(LineageContract.from_dict(c, f"{where}.contracts[{i}]") for i, c in enumerate(cs)),
            tuple(str(x) for x in ds),
            tuple(Excluded(str(e.get("delivery_id", "")), str(e.get("contract", "")), str(e.get("reason", ""))) for e in ex),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"contracts": [c.to_dict() for c in self.contracts], "deliveries": list(self.deliveries),
                "excluded": [e.to_dict() for e in self.excluded]}


@dataclass(frozen=True)
class Manifest:
    """What a published version is: its data files, lineage, curation and validation, policy and sovereignty."""

    dataset: str
    title: str
    description: str
    version: str
    version_reason: str
    created_at: str
    site: SiteRef
    table: str
    snapshot_id: int | None
    schema: dict[str, str]
    rows: int
    rows_per_contract: dict[str, int]
    files: tuple[DataFile, ...]
    lineage: Lineage
    curation: dict[str, dict[str, Any]]
    validation: dict[str, dict[str, Any]]
    policy: dict[str, Any]
    sovereignty: dict[str, Any]
    seconds: float = 0.0
    # the kinds' own sections, by manifest key (``Kind.manifest_key``: ``cad``)
    sections: dict[str, Any] = field(default_factory=dict)
    datasheet: dict[str, Any] | None = None
    status: str | None = None
    replica: dict[str, Any] | None = None
    withdrawn: dict[str, Any] | None = None
    # the keys in the order they were read (or written): ``to_dict`` keeps it
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    # ---- reading and writing -------------------------------------------------

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> Manifest:
        """Check and type a manifest read from JSON; an error names the field that is missing or wrong."""
        if not isinstance(d, dict):
            raise IntegrityError(f"{where} must be a JSON object, not {type(d).__name__}")
        files = _need(d, "files", list, where)
        known = set(CORE_KEYS) | set(LATER_KEYS)
        snap = d.get("snapshot_id")
        return cls(
            dataset=_need(d, "dataset", str, where),
            title=str(d.get("title") or d["dataset"]),
            description=str(d.get("description") or ""),
            version=_need(d, "version", str, where),
            version_reason=str(d.get("version_reason") or ""),
            created_at=str(d.get("created_at") or ""),
            site=SiteRef.from_dict(d["site"], f"{where}.site") if "site" in d else SiteRef("", "", ""),
            table=str(d.get("table") or ""),
            snapshot_id=int(snap) if snap is not None else None,
            schema=dict(_need(d, "schema", dict, where)),
            rows=int(_need(d, "rows", int, where)),
            rows_per_contract=dict(d.get("rows_per_contract") or {}),
            files=tuple(DataFile.from_dict(f, f"{where}.files[{i}]") for i, f in enumerate(files)),
            lineage=Lineage.from_dict(d["lineage"], f"{where}.lineage") if "lineage" in d else Lineage((), ()),
            curation=dict(d.get("curation") or {}),
            validation=dict(d.get("validation") or {}),
            policy=dict(_need(d, "policy", dict, where)),
            sovereignty=dict(d.get("sovereignty") or {}),
            seconds=float(d.get("seconds") or 0.0),
            sections={k: v for k, v in d.items() if k not in known},
            datasheet=d.get("datasheet"),
            status=d.get("status"),
            replica=d.get("replica"),
            withdrawn=d.get("withdrawn"),
            order=tuple(d),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, its keys in the order it was read (or publish's order)."""
        values: dict[str, Any] = {
            "dataset": self.dataset, "title": self.title, "description": self.description, "version": self.version,
            "version_reason": self.version_reason, "created_at": self.created_at, "site": self.site.to_dict(),
            "table": self.table, "snapshot_id": self.snapshot_id, "schema": dict(self.schema), "rows": self.rows,
            "rows_per_contract": dict(self.rows_per_contract), "files": [f.to_dict() for f in self.files],
            "lineage": self.lineage.to_dict(), "curation": self.curation, "validation": self.validation,
            "policy": self.policy, "sovereignty": self.sovereignty, "seconds": self.seconds,
            **self.sections,
        }
        for k in LATER_KEYS:
            v = getattr(self, k)
            if v is not None:
                values[k] = v
        if not self.order:  # built by publish: every part, in publish's order
            return values
        # read from JSON: its keys in its order (a replica's manifest has no site or table), then what was set since
        order = [k for k in self.order if k in values]
        seen = set(self.order)
        order += [k for k in values if k not in seen and k not in CORE_KEYS]
        return {k: values[k] for k in order}

    # ---- what readers ask ----------------------------------------------------

    @property
    def ref(self) -> str:
        """``dataset@version``, as people and the audit log name a version."""
        return f"{self.dataset}@{self.version}"

    @property
    def contract_ids(self) -> list[str]:
        return [c.id for c in self.lineage.contracts]

    @property
    def tenants(self) -> list[str]:
        return sorted({c.tenant for c in self.lineage.contracts})

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def section(self, key: str | None) -> Any:
        """A kind's section of the manifest (None for a kind that attaches nothing, or an absent section)."""
        return self.sections.get(key) if key else None

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` (a manifest is immutable once published; a withdrawal or a replica writes a new one)."""
        return dataclasses.replace(self, **changes)
