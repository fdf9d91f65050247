"""Retention and withdrawal enforcement: deletion that is real on disk.

A contract past its ``retention_until`` (or withdrawn by its firm) loses its
data everywhere the lab keeps it:

- landing (accepted and quarantined files), raw and curated Parquet,
  validation results and any other file named after its deliveries;
- the catalog rows that hold values (watermarks per entity, curation
  profiles, validation results); the receipt stays with its file hashes,
  and the audit entry of the deletion lists the hashes of what was deleted;
- every dataset version containing its deliveries is marked withdrawn
  (pull refused with the reason); new versions leave it out;
- the Iceberg tables: the withdrawn versions' tags are removed, the rows are
  deleted from the current snapshot (copy-on-write), every unprotected
  snapshot is expired (pyiceberg ``expire_snapshots``) and then every file
  under the table location that no remaining snapshot references is removed
  (pyiceberg 0.12 has no orphan-file removal, so :func:`remove_orphans` does
  it: it lists manifests and live data files of each snapshot);
- SQLite stores under ``$DATALAB_HOME`` are vacuumed and their WAL truncated,
  so freed pages do not keep the bytes.

The Dagster side (run event logs with previews) is purged by a hook that
``pipelines.retention`` passes in: the core never imports Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, safe_segment, settings
from datalab.contracts import contract as contracts_mod
from datalab.policy import withdrawals
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest
from datalab.store.storage import Store, store

PURGED = ("expired", "withdrawn")
# Directories whose files belong to single deliveries (named by delivery id).
# Where a delivery's files are: in the lab's store (home, or an object store) and, for its
# validation reports and GX results, under home on the machine that validated it.
STORE_AREAS = ("landing", "staging", "raw", "curated")
HOME_AREAS = ("validation", "gx")

Hook = Callable[[str, list[str], list[tuple[str, str]], Settings], dict[str, Any]]


@dataclass
class PurgeReport:
    contract_id: str
    status: str
    reason: str
    deliveries: list[str] = field(default_factory=list)
    files_deleted: int = 0
    bytes_deleted: int = 0
    versions_withdrawn: list[str] = field(default_factory=list)
    iceberg: dict[str, Any] = field(default_factory=dict)
    hook: dict[str, Any] = field(default_factory=dict)


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def expired_contracts(contracts: dict[str, contracts_mod.Contract], today: dt.date) -> dict[str, str]:
    """Contract id -> reason, for every contract past its retention date."""
    return {c.id: f"retention_until {c.policy.retention_until} has passed (today {today})"
            for c in contracts.values() if c.policy.retention_until and today > c.policy.retention_until}


def _live_deliveries(contract_id: str, conn: sa.Connection) -> list[str]:
    d = cat.deliveries
    return [r.id for r in conn.execute(sa.select(d.c.id).where(d.c.contract_id == contract_id, d.c.status.notin_(PURGED)))]


def _delivery_files(delivery_id: str, contract_id: str, s: Settings, conn: sa.Connection,
                    stored: list[str]) -> list[str | Path]:
    """Every file of a delivery: its recorded keys in the lab's store, anything there named after it
    (``stored``: the keys under the delivery areas, listed once per purge), and this machine's
    validation reports and GX results named after it (paths under home)."""
    keys: set[str] = set()
    f, d = cat.delivery_files, cat.deliveries
    for r in conn.execute(sa.select(f.c.stored_path).where(f.c.delivery_id == delivery_id)):
        if not r.stored_path:
            continue
        # Landing is content-addressed: keep a file another live delivery (of
        # a contract not being purged) still references.
        shared = conn.execute(
            sa.select(f.c.delivery_id).select_from(f.join(d, d.c.id == f.c.delivery_id))
            .where(f.c.stored_path == r.stored_path, f.c.delivery_id != delivery_id,
                   d.c.contract_id != contract_id, d.c.status.notin_(PURGED))).first()
        if shared is None:
            keys.add(r.stored_path)
    p = conn.execute(sa.select(cat.processing).where(cat.processing.c.delivery_id == delivery_id)).first()
    if p is not None:
        keys.update(rel for rel in (p.raw_path, p.curated_path) if rel)
    keys.update(k for k in stored if delivery_id in k.rsplit("/", 1)[-1])
    local: set[Path] = set()
    for area in HOME_AREAS:
        root = s.home / area
        if root.exists():
            local.update(root.rglob(f"*{delivery_id}*"))
    return [*sorted(keys), *sorted(local)]


def _stored_keys(s: Settings) -> list[str]:
    """Every key under the delivery areas of the lab's store (landing, staging, raw, curated)."""
    st = store(s)
    return [o.key for area in STORE_AREAS for o in st.list(area)]


def _delete_path(p: str | Path, ledger: list[dict[str, Any]], s: Settings) -> None:
    """Delete a key of the lab's store (a file or everything under it) or a path under home; each file
    goes into the ledger with its checksum and size, read before it is deleted."""
    if isinstance(p, str):
        st = store(s)
        for key in ([p] if st.exists(p) else [o.key for o in st.list(p)]):
            with st.open_input(key) as f:
                h, n = hashlib.sha256(), 0
                while chunk := f.read(8 << 20):
                    h.update(chunk)
                    n += len(chunk)
            ledger.append({"path": key, "sha256": h.hexdigest(), "bytes": n})
            st.remove(key)
        return
    if p.is_dir():
        for q in sorted(p.rglob("*")):
            if q.is_file():
                ledger.append({"path": str(q.relative_to(s.home)), "sha256": _sha(q), "bytes": q.stat().st_size})
        shutil.rmtree(p)
    elif p.is_file():
        ledger.append({"path": str(p.relative_to(s.home)), "sha256": _sha(p), "bytes": p.stat().st_size})
        p.unlink()


def _contract_dirs(contract_id: str, s: Settings) -> list[str]:
    """The raw and curated folders (keys) that hold only this contract's files (``<area>/<tenant>/<product>``)."""
    c = contracts_mod.load_all(s.contracts_dir).get(contract_id)
    if c is not None:
        tenant, product = c.tenant, c.product
    else:  # a contract removed from the repository still has its data deleted
        parts = contract_id.split(":")
        if len(parts) != 4:
            return []
        tenant, product = parts[2], parts[3]
    try:
        segs = [safe_segment(tenant, "tenant"), safe_segment(product, "product")]
    except ValueError:
        return []
    return [f"{area}/{segs[0]}/{segs[1]}" for area in ("raw", "curated")]


def _sweep_contract(contract_id: str, s: Settings) -> list[dict[str, Any]]:
    """Delete every file left in the contract's raw and curated directories, whatever its state.

    The deliveries' own files are gone by now; what is left was never
    recorded: the ``.tmp`` of a landing or curation a crash interrupted
    (parsed readings all the same), or a file whose receipt never
    committed. Returns the ledger (path, hash, bytes) for the audit log.
    """
    ledger: list[dict[str, Any]] = []
    for d in _contract_dirs(contract_id, s):
        _delete_path(d, ledger, s)
    return ledger


INTERRUPTED = ("*.tmp", "*.part")


def clean_interrupted(s: Settings | None = None, grace_s: float = 60.0) -> list[str]:
    """Remove the temporary files of writes a crash interrupted (raw, curated, landing), and with an
    object store the fetched copies of processes that died; returns their paths.

    Every writer of the lab writes ``<name>.tmp`` (or ``.part``) and renames
    it when complete, so a temporary file nobody has written to for
    ``grace_s`` seconds belongs to a process that died: it holds parsed
    readings no receipt or withdrawal knows of. Called when the service
    starts; a live writer touches its file far more often than the grace.
    """
    s = s or settings()
    now = time.time()
    removed = []
    for root in (s.raw, s.curated, s.landing):
        if not root.exists():
            continue
        for pattern in INTERRUPTED:
            for p in root.rglob(pattern):
                try:
                    if p.is_file() and now - p.stat().st_mtime >= grace_s:
                        p.unlink()
                        removed.append(str(p.relative_to(s.files_root)))
                except FileNotFoundError:
                    pass  # its writer finished or another cleaner was first
    # with an object store: the fetched copies of processes that died on this machine
    removed += [f".fetch/{d}" for d in store(s).clean_fetched()]
    return removed


def purge_contract(contract_id: str, status: str, reason: str, actor: str, s: Settings | None = None,
                   hook: Hook | None = None) -> PurgeReport:
    """Delete every delivery of ``contract_id`` and withdraw the versions holding them."""
    s = s or settings()
    assert status in PURGED
    c = withdrawals.catalog(s)
    rep = PurgeReport(contract_id, status, reason)
    ledger: list[dict[str, Any]] = []
    with c.begin() as conn:
        rep.deliveries = _live_deliveries(contract_id, conn)
        stored = _stored_keys(s) if rep.deliveries else []
        targets = {d: _delivery_files(d, contract_id, s, conn, stored) for d in rep.deliveries}
    for d, paths in targets.items():
        mine: list[dict[str, Any]] = []
        for p in paths:
            _delete_path(p, mine, s)
        ledger += mine
        with c.begin() as conn:
            conn.execute(cat.deliveries.update().where(cat.deliveries.c.id == d).values(status=status))
            conn.execute(cat.processing.update().where(cat.processing.c.delivery_id == d).values(
                stage="deleted", stats="{}", validation=None, validation_ok=None, raw_path=None,
                curated_path=None, updated_at=cat.now_iso()))
            conn.execute(cat.watermarks.delete().where(cat.watermarks.c.delivery_id == d))
            conn.execute(cat.curated_spans.delete().where(cat.curated_spans.c.delivery_id == d))
            c.audit(actor, "delete", d, status, {"contract": contract_id, "reason": reason, "files": mine}, conn=conn)
    leftovers = _sweep_contract(contract_id, s)
    if leftovers:
        c.audit(actor, "delete", contract_id, status, {"reason": reason, "leftovers": leftovers})
    ledger += leftovers
    rep.files_deleted = len(ledger)
    rep.bytes_deleted = sum(x["bytes"] for x in ledger)
    purged = set(rep.deliveries) | _purged_deliveries(contract_id, s)
    withdrawn = _withdraw_versions(purged, reason, actor, s)
    rep.versions_withdrawn = [f"{n}@{v}" for n, v, _ in withdrawn]
    for ident, tags in _tables(withdrawn).items():
        rep.iceberg[ident] = purge_table(ident, contract_id, tags, s)
    if hook is not None:
        rep.hook = hook(contract_id, rep.deliveries, [(n, v) for n, v, _ in withdrawn], s)
    compact_sqlite(s)
    c.audit(actor, "retention", contract_id, status, {
        "reason": reason, "deliveries": rep.deliveries, "files_deleted": rep.files_deleted,
        "bytes_deleted": rep.bytes_deleted, "versions_withdrawn": rep.versions_withdrawn,
        "iceberg": rep.iceberg})
    return rep


def _purged_deliveries(contract_id: str, s: Settings) -> set[str]:
    with cat.Catalog(s.catalog_url).begin() as conn:
        d = cat.deliveries
        return {r.id for r in conn.execute(sa.select(d.c.id).where(d.c.contract_id == contract_id, d.c.status.in_(PURGED)))}


def _withdraw_versions(purged: set[str], reason: str, actor: str, s: Settings) -> list[tuple[str, str, str]]:
    """Withdraw every active version whose lineage holds a purged delivery."""
    out = []
    with cat.Catalog(s.catalog_url).begin() as conn:
        rows = list(conn.execute(sa.select(cat.dataset_versions).where(cat.dataset_versions.c.status != "withdrawn")))
    for r in rows:
        m = Manifest.from_dict(json.loads(store(s).read_text(r.manifest_path)), where=r.manifest_path)
        hit = sorted(set(m.lineage.deliveries) & purged)
        if hit:
            withdrawals.withdraw_version(r.dataset, r.version, reason, hit, actor, s)
            out.append((r.dataset, r.version, r.table_ident))
    return out


def _tables(withdrawn: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _, v, ident in withdrawn:
        out.setdefault(ident, []).append(f"v{v}")
    return out


def purge_table(ident: str, contract_id: str, tags: list[str], s: Settings) -> dict[str, Any]:
    """Remove a contract's rows from an Iceberg table, for real.

    Tags of withdrawn versions go, the rows go from the current snapshot,
    unprotected snapshots are expired, unreferenced files removed. The rows
    are found under the contract id and under its pseudonymised form (a firm
    that withholds its name is published so: ``firm_names.row_mask``).
    """
    from pyiceberg.expressions import In

    from datalab.store.publish import iceberg_catalog

    ice = iceberg_catalog(s)
    if not ice.table_exists(ident):
        return {"missing": True}
    tbl = ice.load_table(ident)
    present = [t for t in tags if t in tbl.metadata.refs]
    if present:
        ms = tbl.manage_snapshots()
        for t in present:
            ms = ms.remove_tag(t)
        ms.commit()
        tbl = ice.load_table(ident)
    rows_before = 0
    if tbl.current_snapshot() is not None:
        mine = In("contract_id", _row_ids(contract_id, s))
        rows_before = tbl.scan(row_filter=mine, selected_fields=("contract_id",)).to_arrow().num_rows
        if rows_before:
            tbl.delete(mine)
            tbl = ice.load_table(ident)
    protected = {ref.snapshot_id for ref in tbl.metadata.refs.values()}
    expire = [x.snapshot_id for x in tbl.metadata.snapshots if x.snapshot_id not in protected]
    if expire:
        tbl.maintenance.expire_snapshots().by_ids(expire).commit()
        tbl = ice.load_table(ident)
    removed = remove_orphans(tbl, s)
    return {"tags_removed": present, "rows_deleted": rows_before, "snapshots_expired": len(expire), "files_removed": removed}


def _row_ids(contract_id: str, s: Settings) -> list[str]:
    """The values ``contract_id`` can hold in published rows: the id, and the id under its firm's pseudonym."""
    from datalab.policy import firm_names

    with cat.Catalog(s.catalog_url).begin() as conn:
        d = cat.deliveries
        tenants = {r.tenant for r in conn.execute(sa.select(d.c.tenant).where(d.c.contract_id == contract_id).distinct())}
    return firm_names.row_contract_ids(contract_id, tenants, s)


def referenced_files(tbl: Any, st: Store) -> set[str]:
    """Every file (its key in the lab's store) a remaining snapshot (or the current metadata) needs."""
    refs = {st.key_of_uri(tbl.metadata_location)}
    for snap in tbl.metadata.snapshots:
        refs.add(st.key_of_uri(snap.manifest_list))
        for mf in snap.manifests(tbl.io):
            refs.add(st.key_of_uri(mf.manifest_path))
            for e in mf.fetch_manifest_entry(tbl.io, discard_deleted=True):
                refs.add(st.key_of_uri(e.data_file.file_path))
    return refs


def remove_orphans(tbl: Any, s: Settings | None = None) -> int:
    """Delete files under the table location that no snapshot references (listed by prefix in the store).

    Old metadata JSON files go too: the catalog points at the current one,
    and the deleted data's manifests are only reachable through them.
    """
    st = store(s or settings())
    refs = referenced_files(tbl, st)
    n = 0
    for o in st.list(st.key_of_uri(tbl.metadata.location)):
        if o.key not in refs:
            st.remove(o.key)
            n += 1
    return n


def compact_sqlite(s: Settings) -> list[str]:
    """VACUUM every SQLite database under the lab and truncate its WAL.

    SQLite keeps deleted rows in free pages (and the WAL) until the file is
    rewritten; a deletion that must be real on disk needs this. Databases in
    use by another writer are skipped and named in the result.
    """
    busy = []
    dbs = sorted({p for p in s.home.rglob("*.db")} | ({Path(s.catalog_url.removeprefix("sqlite:///"))} if s.catalog_url.startswith("sqlite:///") else set()))
    for db in dbs:
        if not db.is_file():
            continue
        try:
            con = sqlite3.connect(db, timeout=30, isolation_level=None)
            try:
                con.execute("VACUUM")
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            busy.append(f"{db}: {e}")
    if not s.catalog_url.startswith("sqlite"):
        # PostgreSQL: deleted tuples are reclaimed by VACUUM; run it on the tables we touched.
        with cat.Catalog(s.catalog_url).engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for t in ("dl_processing", "dl_watermarks", "dl_curated_spans", "dl_deliveries"):
                conn.exec_driver_sql(f"VACUUM {t}")
    return busy


def enforce(today: dt.date | None = None, actor: str = "retention", s: Settings | None = None,
            hook: Hook | None = None) -> list[PurgeReport]:
    """Purge every contract past its retention date that still has data."""
    s = s or settings()
    today = today or dt.date.today()
    contracts = contracts_mod.load_all(s.contracts_dir)
    out = []
    for cid, reason in sorted(expired_contracts(contracts, today).items()):
        with cat.Catalog(s.catalog_url).begin() as conn:
            live = _live_deliveries(cid, conn)
        if live:
            out.append(purge_contract(cid, "expired", reason, actor, s, hook))
    # Withdrawn contracts: anything that arrived since (refused pushes keep
    # their files in quarantine) goes too.
    for cid in sorted(contracts):
        w = withdrawals.contract_withdrawal(cid, s)
        if w is None:
            continue
        with cat.Catalog(s.catalog_url).begin() as conn:
            live = _live_deliveries(cid, conn)
        if live:
            out.append(purge_contract(cid, "withdrawn", f"contract {cid} withdrawn by {w['actor']} at {w['at']}: {w['reason']}", actor, s, hook))
    return out


def withdraw_contract(ref: str, actor: str, reason: str, s: Settings | None = None, hook: Hook | None = None) -> PurgeReport:
    """A firm withdraws its contract: recorded, then purged like expired data."""
    s = s or settings()
    c = contracts_mod.find(contracts_mod.load_all(s.contracts_dir), ref)
    w = withdrawals.record_contract(c.id, actor, reason, s)
    return purge_contract(c.id, "withdrawn", f"contract {c.id} withdrawn by {w['actor']} at {w['at']}: {w['reason']}", actor, s, hook)
