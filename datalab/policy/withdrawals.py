"""Withdrawals: of a contract by its firm, and of dataset versions by the lab.

A firm withdraws a contract (``datalab contract withdraw``) and from that
moment its data is treated exactly like data past ``retention_until``: its
deliveries are deleted (see :mod:`datalab.policy.retention`), versions containing
them are withdrawn, new versions leave the contract out. The records here
are small and keep no data: who, when, why, and which deliveries.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest

metadata = sa.MetaData()

contract_withdrawals = sa.Table(
    "dl_contract_withdrawals",
    metadata,
    sa.Column("contract_id", sa.String(200), primary_key=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

version_withdrawals = sa.Table(
    "dl_version_withdrawals",
    metadata,
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("deliveries", sa.Text, nullable=False),
)

_READY: set[str] = set()


def catalog(s: Settings) -> cat.Catalog:
    """The lab catalog with this module's tables created (once per URL)."""
    c = cat.Catalog(s.catalog_url)
    if s.catalog_url not in _READY:
        cat.create_tables(metadata, c.engine)
        _READY.add(s.catalog_url)
    return c


def contract_withdrawal(contract_id: str, s: Settings | None = None) -> dict[str, Any] | None:
    s = s or settings()
    with catalog(s).begin() as conn:
        r = conn.execute(sa.select(contract_withdrawals).where(contract_withdrawals.c.contract_id == contract_id)).first()
    return dict(r._mapping) if r else None


def withdrawn_reason(contract_id: str, s: Settings) -> str | None:
    """Why a push to ``contract_id`` is refused, if its firm withdrew it."""
    w = contract_withdrawal(contract_id, s)
    if w is None:
        return None
    return f"contract {contract_id} was withdrawn by {w['actor']} at {w['at']} ({w['reason']}); pushes are refused (rule: withdrawn)"


def record_contract(contract_id: str, actor: str, reason: str, s: Settings) -> dict[str, Any]:
    """Record the withdrawal (idempotent: the first one stands)."""
    existing = contract_withdrawal(contract_id, s)
    if existing:
        return existing
    row = {"contract_id": contract_id, "at": cat.now_iso(), "actor": actor, "reason": reason}
    c = catalog(s)
    with c.begin() as conn:
        conn.execute(contract_withdrawals.insert().values(**row))
        c.audit(actor, "withdraw", contract_id, "recorded", {"reason": reason}, conn=conn)
    return row


def withdraw_version(dataset: str, version: str, reason: str, deliveries: list[str], actor: str, s: Settings) -> None:
    """Mark a version withdrawn: catalog status, manifest note, card replaced.

    The manifest stays (hashes, counts, lineage: the evidence), the card and
    plots are replaced by a notice because they describe the deleted data
    (entity ids, value distributions).
    """
    c = catalog(s)
    at = cat.now_iso()
    with c.begin() as conn:
        row = conn.execute(sa.select(cat.dataset_versions).where(
            cat.dataset_versions.c.dataset == dataset, cat.dataset_versions.c.version == version)).first()
        if row is None or row.status == "withdrawn":
            return
        conn.execute(cat.dataset_versions.update().where(
            cat.dataset_versions.c.dataset == dataset, cat.dataset_versions.c.version == version).values(status="withdrawn"))
        conn.execute(version_withdrawals.insert().values(dataset=dataset, version=version, at=at, reason=reason,
                                                          deliveries=json.dumps(sorted(deliveries))))
        c.audit(actor, "withdraw", f"{dataset}@{version}", "withdrawn", {"reason": reason, "deliveries": sorted(deliveries)}, conn=conn)
        manifest_key = row.manifest_path
    from datalab.store.storage import store

    st = store(s)
    m = Manifest.from_dict(json.loads(st.read_text(manifest_key)), where=manifest_key)
    m = m.replace(withdrawn={"at": at, "reason": reason, "deliveries": sorted(deliveries)})
    st.write_bytes(manifest_key, json.dumps(m.to_dict(), indent=2, default=str).encode())
    vdir = manifest_key.rsplit("/", 1)[0]
    for o in st.list(vdir):  # the card, plots, masks, a CAD version's objects: they describe the deleted data
        if o.key != manifest_key:
            st.remove(o.key)
    st.write_bytes(f"{vdir}/card.md", (
        f"# {m.title} — version {version} (WITHDRAWN)\n\n"
        f"Withdrawn at {at}: {reason}.\n\nIts data was deleted; the manifest keeps the checksums "
        f"of the files and the ids of the {len(m.lineage.deliveries)} deliveries as evidence. "
        f"Pulls are refused.\n").encode())
