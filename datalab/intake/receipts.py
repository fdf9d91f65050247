"""Delivery receipts: the records a push leaves in the catalog, and reading them back.

Kept below the landing zone (which writes them) so that ingestion, curation,
the side files and the kinds' checks can read receipts without importing the
push itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.errors import NotFound
from datalab.store import catalog as cat


@dataclass
class FileReceipt:
    name: str
    sha256: str
    bytes: int
    rows: int | None
    format: str | None
    compression: str | None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Receipt:
    delivery_id: str
    tenant: str
    contract_id: str
    contract_version: str
    status: str  # accepted | rejected
    reasons: list[str]
    bytes: int
    rows: int | None
    received_at: str
    pushed_by: str
    files: list[FileReceipt]
    duplicate: bool = False  # True when this push repeated an earlier one
    # Which rule decided the status: the rules behind the reasons of a
    # rejection, the contract's checks for an acceptance, or idempotency for
    # a repeat (then naming the delivery it repeats).
    decided_by: str = ""
    warnings: list[str] = field(default_factory=list)  # accepted, but look: e.g. too many duplicate keys
    correction: bool = False  # declared correction: its readings replace earlier ones with the same key

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def to_dict(self) -> dict:
        return asdict(self)


MAX_REASON_CHARS = 400  # one problem as stored and returned; a bad column name may be megabytes long


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out.

    Problems quote what the file held (column names, values); the file is
    outside input, so what is quoted back is bounded.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


MAX_REASONS = 100  # reasons stored and returned per receipt (and per file); the rest are counted


def bound_reasons(reasons: list[str]) -> list[str]:
    """At most ``MAX_REASONS`` reasons, each clipped, then "and N more".

    Reasons quote outside input and are stored twice (receipt and file) and
    returned by every receipt listing, so both their number and their length
    are bounded here, where they are stored.
    """
    out = [clip(r) for r in reasons[:MAX_REASONS]]
    if len(reasons) > MAX_REASONS:
        out.append(f"and {len(reasons) - MAX_REASONS} more")
    return out


def safe_name(name: str) -> str:
    """A delivered file's name reduced to a harmless base name.

    Names come from outside (CLI arguments, HTTP form fields): directories,
    drive letters, control characters and dot-files are stripped so the name
    can be shown and stored but never used to reach a path.
    """
    base = PureWindowsPath(PurePosixPath(name).name).name
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '/\\:*?"<>|')
    base = base.strip().lstrip(".").strip()[:200]
    return base or "unnamed"


def _row_to_receipt(conn: sa.Connection, r: sa.Row) -> Receipt:
    files = [
        FileReceipt(f.name, f.sha256, f.bytes, f.rows, f.format, f.compression, bound_reasons(json.loads(f.reasons)))
        for f in conn.execute(
            sa.select(cat.delivery_files).where(cat.delivery_files.c.delivery_id == r.id).order_by(cat.delivery_files.c.position)
        )
    ]
    meta = conn.execute(sa.select(cat.delivery_meta).where(cat.delivery_meta.c.delivery_id == r.id)).first()
    return Receipt(r.id, r.tenant, r.contract_id, r.contract_version, r.status, bound_reasons(json.loads(r.reasons)),
                   r.bytes, r.rows, r.received_at, r.pushed_by, files,
                   decided_by=meta.decided_by if meta else "",
                   warnings=json.loads(meta.warnings) if meta else [],
                   correction=bool(meta.correction) if meta else False)


def add_warnings(delivery_id: str, warnings: list[str], s: Settings | None = None) -> None:
    """Add warnings found after the push (curation's) to a delivery's receipt, once each."""
    if not warnings:
        return
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    m = cat.delivery_meta
    with catalog.begin() as conn:
        row = conn.execute(sa.select(m).where(m.c.delivery_id == delivery_id)).first()
        have = json.loads(row.warnings) if row else []
        new = [w for w in warnings if w not in have]
        if not new:
            return
        if row is None:
            conn.execute(m.insert().values(delivery_id=delivery_id, correction=False, warnings=json.dumps(new), decided_by=""))
        else:
            conn.execute(m.update().where(m.c.delivery_id == delivery_id).values(warnings=json.dumps(have + new)))


def _receipt_by_key(catalog: cat.Catalog, key: str) -> Receipt | None:
    with catalog.begin() as conn:
        r = conn.execute(sa.select(cat.deliveries).where(cat.deliveries.c.idem_key == key)).first()
        return _row_to_receipt(conn, r) if r else None


def get_receipt(delivery_id: str, tenant: str | None = None, s: Settings | None = None) -> Receipt:
    """One receipt; with ``tenant``, only that firm's (others look absent)."""
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    q = sa.select(cat.deliveries).where(cat.deliveries.c.id == delivery_id)
    if tenant is not None:
        q = q.where(cat.deliveries.c.tenant == tenant)
    with catalog.begin() as conn:
        r = conn.execute(q).first()
        if r is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        return _row_to_receipt(conn, r)


DEFAULT_RECEIPT_LIMIT = 100


MAX_RECEIPT_LIMIT = 1000


def list_receipts(
    tenant: str | None = None, contract_id: str | None = None, status: str | None = None,
    s: Settings | None = None, limit: int | None = None, offset: int = 0,
) -> list[Receipt]:
    """Receipts in arrival order; ``limit``/``offset`` page through them (None: all, for local use)."""
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    q = sa.select(cat.deliveries).order_by(cat.deliveries.c.received_at, cat.deliveries.c.id)
    if limit is not None:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    for col, val in ((cat.deliveries.c.tenant, tenant), (cat.deliveries.c.contract_id, contract_id),
                     (cat.deliveries.c.status, status)):
        if val is not None:
            q = q.where(col == val)
    with catalog.begin() as conn:
        return [_row_to_receipt(conn, r) for r in conn.execute(q)]


def stored_files(delivery_id: str, s: Settings | None = None) -> list[tuple[str, Path, str]]:
    """(original name, stored path, sha256) of a delivery's files, in push order.

    The paths are where the files are on this machine; with an object store,
    read them inside ``store(s).fetched(...)``, which downloads them first.
    """
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    with catalog.begin() as conn:
        rows = conn.execute(
            sa.select(cat.delivery_files).where(cat.delivery_files.c.delivery_id == delivery_id)
            .order_by(cat.delivery_files.c.position)
        ).all()
    from datalab.store.storage import store

    st = store(s)
    return [(r.name, st.local(r.stored_path), r.sha256) for r in rows if r.stored_path]

