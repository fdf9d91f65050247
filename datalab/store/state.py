"""Processing state of deliveries: which stage each reached, with its stats.

Kept in the catalog so the CLI, the Dagster sensor and publishing agree on
what is pending, curated, validated or failed, whichever process ran it.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.store import catalog as cat


def get(delivery_id: str, s: Settings | None = None) -> dict[str, Any] | None:
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    with c.begin() as conn:
        r = conn.execute(sa.select(cat.processing).where(cat.processing.c.delivery_id == delivery_id)).first()
    if r is None:
        return None
    return {
        "delivery_id": r.delivery_id, "stage": r.stage, "raw_path": r.raw_path,
        "curated_path": r.curated_path, "stats": json.loads(r.stats),
        "validation_ok": r.validation_ok,
        "validation": json.loads(r.validation) if r.validation else None,
    }


def set_stage(delivery_id: str, stage: str, s: Settings | None = None, stats: dict | None = None, **cols: Any) -> None:
    """Move a delivery to ``stage``, merging ``stats`` into what is recorded."""
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    with c.begin() as conn:
        r = conn.execute(sa.select(cat.processing).where(cat.processing.c.delivery_id == delivery_id)).first()
        merged = {**(json.loads(r.stats) if r else {}), **(stats or {})}
        if "validation" in cols and cols["validation"] is not None and not isinstance(cols["validation"], str):
            cols["validation"] = json.dumps(cols["validation"], default=str)
        values = {"stage": stage, "stats": json.dumps(merged, default=str), "updated_at": cat.now_iso(), **cols}
        if r is None:
            conn.execute(cat.processing.insert().values(delivery_id=delivery_id, **values))
        else:
            conn.execute(cat.processing.update().where(cat.processing.c.delivery_id == delivery_id).values(**values))


def pending(contract_id: str, s: Settings | None = None) -> list[str]:
    """Accepted deliveries of a contract that are not yet validated, oldest first."""
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    d, p = cat.deliveries, cat.processing
    q = (
        sa.select(d.c.id)
        .select_from(d.outerjoin(p, p.c.delivery_id == d.c.id))
        .where(d.c.contract_id == contract_id, d.c.status == "accepted")
        .where(sa.or_(p.c.stage.is_(None), p.c.stage.notin_(["validated", "failed"])))
        .order_by(d.c.received_at, d.c.id)
    )
    with c.begin() as conn:
        return [r.id for r in conn.execute(q)]


def pending_page(contract_id: str, after: str = "", limit: int = 25, s: Settings | None = None) -> list[str]:
    """At most ``limit`` pending deliveries with an id after ``after``, in id order.

    The sensor's bounded read: with thousands of pending deliveries a tick
    reads one page (an index range scan) instead of all of them, and keeps
    its place in a cursor. Delivery ids start with their UTC receipt time,
    so id order is arrival order.
    """
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    d, p = cat.deliveries, cat.processing
    q = (
        sa.select(d.c.id)
        .select_from(d.outerjoin(p, p.c.delivery_id == d.c.id))
        .where(d.c.contract_id == contract_id, d.c.status == "accepted", d.c.id > after)
        .where(sa.or_(p.c.stage.is_(None), p.c.stage.notin_(["validated", "failed"])))
        .order_by(d.c.id)
        .limit(limit)
    )
    with c.begin() as conn:
        return [r.id for r in conn.execute(q)]


def accepted(contract_id: str, s: Settings | None = None) -> list[dict[str, Any]]:
    """Every accepted delivery of a contract with its stage, oldest first."""
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    d, p = cat.deliveries, cat.processing
    q = (
        sa.select(d.c.id, d.c.received_at, d.c.contract_version, p.c.stage, p.c.curated_path, p.c.validation_ok, p.c.stats)
        .select_from(d.outerjoin(p, p.c.delivery_id == d.c.id))
        .where(d.c.contract_id == contract_id, d.c.status == "accepted")
        .order_by(d.c.received_at, d.c.id)
    )
    with c.begin() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
