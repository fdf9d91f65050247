"""Processing state of deliveries: which stage each reached, with its stats.

Kept in the catalog so the CLI, the Dagster sensor and publishing agree on
what is pending, curated, validated or failed, whichever process ran it;
and which deliveries are settled, so that their Dagster partitions may be
rolled up (:func:`settled`, :func:`plan_rollup`; applied by pipelines/rollup.py).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.errors import DatalabError
from datalab.store import catalog as cat
from datalab.store import storage


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
    """Move a delivery to ``stage``, merging ``stats`` into what is recorded.

    Without ``stats`` the recorded ones stay as they are, and are neither
    read nor written again: a verdict's update used to read, parse and
    rewrite the curation's statistics (all its sensors) to leave them alone.
    """
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    p = cat.processing
    if "validation" in cols and cols["validation"] is not None and not isinstance(cols["validation"], str):
        cols["validation"] = json.dumps(cols["validation"], default=str)
    with c.begin() as conn:
        if not stats and conn.execute(p.update().where(p.c.delivery_id == delivery_id).values(
                stage=stage, updated_at=cat.now_iso(), **cols)).rowcount:
            return
        r = conn.execute(sa.select(p).where(p.c.delivery_id == delivery_id)).first()
        merged = {**(json.loads(r.stats) if r else {}), **(stats or {})}
        values = {"stage": stage, "stats": json.dumps(merged, default=str), "updated_at": cat.now_iso(), **cols}
        if r is None:
            conn.execute(p.insert().values(delivery_id=delivery_id, **values))
        else:
            conn.execute(p.update().where(p.c.delivery_id == delivery_id).values(**values))


PROCESSED_STAGES = ("validated", "failed")  # a delivery's processing ends in one of these


def pending(contract_id: str, s: Settings | None = None) -> list[str]:
    """Accepted deliveries of a contract that are not yet validated, oldest first."""
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    d, p = cat.deliveries, cat.processing
    q = (
        sa.select(d.c.id)
        .select_from(d.outerjoin(p, p.c.delivery_id == d.c.id))
        .where(d.c.contract_id == contract_id, d.c.status == "accepted")
        .where(sa.or_(p.c.stage.is_(None), p.c.stage.notin_(PROCESSED_STAGES)))
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
        .where(sa.or_(p.c.stage.is_(None), p.c.stage.notin_(PROCESSED_STAGES)))
        .order_by(d.c.id)
        .limit(limit)
    )
    with c.begin() as conn:
        return [r.id for r in conn.execute(q)]


@dataclass(frozen=True)
class Backlog:
    """A contract's recent accepted deliveries that wait for processing, and when the last of them was processed."""

    waiting: int  # accepted, not yet validated or failed
    last_processed: str | None  # the newest validated or failed one's stage time (ISO, UTC); None: none yet


def backlog(contract_id: str, since: dt.datetime, s: Settings | None = None) -> Backlog:
    """The contract's deliveries received from ``since`` on: how many wait, and when processing last ended one.

    One statement over a bounded range of delivery ids (they start with
    their UTC receipt second), so its cost follows the recent intake, not
    the contract's history; the intake's pacing asks it once per push.
    """
    s = s or settings()
    d, p = cat.deliveries, cat.processing
    done = p.c.stage.in_(PROCESSED_STAGES)
    q = (
        sa.select(sa.func.count(d.c.id) - sa.func.count(sa.case((done, 1))),
                  sa.func.max(sa.case((done, p.c.updated_at))))
        .select_from(d.outerjoin(p, p.c.delivery_id == d.c.id))
        .where(d.c.id >= f"d-{since.astimezone(dt.UTC):%Y%m%d%H%M%S}",
               d.c.contract_id == contract_id, d.c.status == "accepted")
    )
    with cat.Catalog(s.catalog_url).begin() as conn:
        waiting, last = conn.execute(q).one()
    return Backlog(int(waiting or 0), last)


def rows_of(ids: list[str], s: Settings | None = None) -> dict[str, int | None]:
    """The rows each delivery's receipt counted (None where the push did not count them)."""
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    d = cat.deliveries
    out: dict[str, int | None] = {}
    with c.begin() as conn:
        for i in range(0, len(ids), 500):  # a bounded IN list
            out.update({r.id: r.rows for r in conn.execute(sa.select(d.c.id, d.c.rows).where(d.c.id.in_(ids[i:i + 500])))})
    return out


def has_other_accepted(contract_id: str, delivery_id: str, s: Settings | None = None) -> bool:
    """Whether the contract has an accepted delivery besides ``delivery_id`` (one indexed row, not all of them)."""
    s = s or settings()
    d = cat.deliveries
    q = sa.select(d.c.id).where(d.c.contract_id == contract_id, d.c.status == "accepted", d.c.id != delivery_id).limit(1)
    with cat.Catalog(s.catalog_url).begin() as conn:
        return conn.execute(q).first() is not None


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


# -- settled deliveries: what the partition roll-up may remove (pipelines/rollup.py) -------------

# Delivery statuses set by retention and withdrawal (datalab.policy.retention.PURGED): the data is gone.
PURGED = ("expired", "withdrawn")
# Why a delivery is settled, in the roll-up's reports and audit entries.
SETTLED_WHY = ("published", "rejected at validation", "expired", "withdrawn")


@dataclass(frozen=True)
class Settled:
    """A delivery no run needs again: its Dagster partition may be rolled up.

    ``at`` is when it settled (ISO, UTC): the first version holding it was
    created, its validation failed, or retention deleted it; ``version``
    names that first version (``dataset@version``) when it was published.
    """

    delivery_id: str
    why: str
    at: str
    version: str | None = None


def settled(contract_id: str, among: Collection[str] | None = None, s: Settings | None = None) -> list[Settled]:
    """The settled deliveries of a contract (of ``among`` only, if given), the earliest settled first.

    Settled means: curated, validated and included in a published version
    (of any status, the lineage of a withdrawn version still names it), or
    rejected at validation (stage ``failed`` with a failed suite), or
    expired or withdrawn by retention. Not settled, so never rolled up: a
    delivery not yet run, running, curated but not validated, validated
    but in no version yet, or failed before its suite ran (a run error a
    re-run may fix). Reads the catalog and the manifests; changes nothing.
    """
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    d, p = cat.deliveries, cat.processing
    q = (
        sa.select(d.c.id, d.c.status, d.c.received_at, p.c.stage, p.c.validation_ok, p.c.updated_at)
        .select_from(d.outerjoin(p, p.c.delivery_id == d.c.id))
        .where(d.c.contract_id == contract_id, d.c.status.in_(("accepted", *PURGED)))
    )
    with c.begin() as conn:
        rows = list(conn.execute(q))
    keep = set(among) if among is not None else None
    out: list[Settled] = []
    candidates: dict[str, str] = {}  # validated and passed: settled once a version holds it
    for r in rows:
        if keep is not None and r.id not in keep:
            continue
        if r.status in PURGED:
            out.append(Settled(r.id, r.status, max(r.received_at, r.updated_at or r.received_at, key=_instant)))
        elif r.stage == "failed" and r.validation_ok is False:
            out.append(Settled(r.id, "rejected at validation", r.updated_at or r.received_at))
        elif r.stage == "validated" and r.validation_ok:
            candidates[r.id] = r.received_at
    for delivery_id, (version, created_at) in first_versions(candidates, s).items():
        out.append(Settled(delivery_id, "published", created_at, version))
    return sorted(out, key=lambda x: (_instant(x.at), x.delivery_id))


def first_versions(received: dict[str, str], s: Settings | None = None) -> dict[str, tuple[str, str]]:
    """Delivery id -> (``dataset@version``, created_at) of the first version whose lineage holds it.

    ``received`` maps each delivery asked about to its receipt time: only
    versions created after the earliest of them are read (a version cannot
    hold a delivery received after it), oldest first, and the reading stops
    once every delivery is found. Each manifest's lineage is read once per
    process, from the lab's store (local files or ``DATALAB_STORAGE``).
    """
    s = s or settings()
    if not received:
        return {}
    since = min(_instant(t) for t in received.values())
    with cat.Catalog(s.catalog_url).begin() as conn:
        versions = [r for r in conn.execute(sa.select(
            cat.dataset_versions.c.dataset, cat.dataset_versions.c.version,
            cat.dataset_versions.c.manifest_path, cat.dataset_versions.c.created_at))
            if _instant(r.created_at) >= since]
    versions.sort(key=lambda r: (_instant(r.created_at), r.dataset, r.version))
    files = storage.store(s)
    left = dict(received)
    found: dict[str, tuple[str, str]] = {}
    for r in versions:
        if not left:
            break
        hit = _lineage(files, r.manifest_path) & left.keys()
        for delivery_id in hit:
            found[delivery_id] = (f"{r.dataset}@{r.version}", r.created_at)
            del left[delivery_id]
    return found


_LINEAGES: dict[tuple[str, str], frozenset[str]] = {}


def _lineage(files: storage.Store, key: str) -> frozenset[str]:
    """The delivery ids a manifest's lineage names (empty if the manifest cannot be read).

    Cached by the store and key: a version's catalog row is written after its
    manifest, and nothing changes a lineage afterwards (a withdrawal adds a
    note), so a manifest read once need not be read again (on S3 too).
    """
    hit = _LINEAGES.get((files.url, key))
    if hit is not None:
        return hit
    try:
        ids = frozenset(str(x) for x in (json.loads(files.read_text(key)).get("lineage") or {}).get("deliveries") or ())
    except (OSError, ValueError, AttributeError, DatalabError):
        return frozenset()  # unreadable: its deliveries count as not published (kept), and it is read again next time
    if len(_LINEAGES) > 4096:
        _LINEAGES.clear()
    _LINEAGES[(files.url, key)] = ids
    return ids


def _instant(ts: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(ts)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class RollupPlan:
    """Which partitions of one contract the roll-up removes, and why.

    ``remove`` holds (delivery, rule): rule ``age`` when it settled more than
    ``keep_days`` ago, ``bound`` when it settled more recently but live
    partitions would exceed the bound without its removal. ``room`` is how many
    partitions may still be added after the removals without passing the bound.
    """

    remove: tuple[tuple[Settled, str], ...]
    live_before: int
    live_after: int
    settled_kept: int
    max_partitions: int
    keep_days: int

    @property
    def room(self) -> int:
        return max(0, self.max_partitions - self.live_after)

    def counts(self) -> dict[str, int]:
        """How many removals per reason a delivery settled (published, rejected at validation, ...)."""
        out: dict[str, int] = {}
        for d, _ in self.remove:
            out[d.why] = out.get(d.why, 0) + 1
        return out


def plan_rollup(live: Collection[str], settled_: Sequence[Settled], now: dt.datetime, keep_days: int,
                max_partitions: int, need: int = 0, busy: Collection[str] = (), limit: int | None = None) -> RollupPlan:
    """Decide which live partitions go; a pure function of its arguments.

    1. Every settled delivery that settled more than ``keep_days`` before
       ``now`` (rule ``age``).
    2. If the partitions left plus ``need`` (the partitions about to be
       added) would pass ``max_partitions``: more settled deliveries, the
       earliest settled first, until there is room for ``need`` and a tenth
       of the bound more, so that a sensor at the bound does not roll up on
       every tick (rule ``bound``).

    Only live partitions of settled deliveries are removed, never one in
    ``busy`` (a run of it is queued or in progress); ``limit`` caps the
    removals (a sensor tick's share of the work).
    """
    live_set = set(live)
    busy_set = set(busy)
    cutoff = now - dt.timedelta(days=keep_days)
    order = [d for d in settled_ if d.delivery_id in live_set and d.delivery_id not in busy_set]
    order.sort(key=lambda d: (_instant(d.at), d.delivery_id))
    cap = len(order) if limit is None else max(0, min(limit, len(order)))
    remove: list[tuple[Settled, str]] = [(d, "age") for d in order if _instant(d.at) < cutoff][:cap]
    left = len(live_set) - len(remove)
    if left + need > max_partitions:
        target = max(0, max_partitions - max(need, max_partitions // 10))
        taken = {d.delivery_id for d, _ in remove}
        for d in order:
            if left <= target or len(remove) >= cap:
                break
            if d.delivery_id not in taken:
                remove.append((d, "bound"))
                left -= 1
    return RollupPlan(tuple(remove), len(live_set), left, len(order) - len(remove), max_partitions, keep_days)


AUDIT_CHUNK = 1000  # delivery ids per audit entry of a roll-up


def record_rollup(contract_id: str, partitions: str, plan: RollupPlan, removed: Sequence[str], actor: str,
                  s: Settings | None = None, part: tuple[int, int] = (1, 1)) -> int | None:
    """Audit partitions a roll-up removed (at most :data:`AUDIT_CHUNK` a call); the entry's sequence number.

    The entry names each delivery with why it settled and the rule that
    removed it (``part`` k of n when the roll-up's removals take several
    entries); the delivery's receipt, processing state and lineage stay in
    the catalog, its runs in Dagster's event log.
    """
    s = s or settings()
    why = {d.delivery_id: (d, rule) for d, rule in plan.remove}
    ids = [x for x in removed if x in why]
    if not ids:
        return None
    return cat.Catalog(s.catalog_url).audit(actor, "rollup", contract_id, "removed", {
        "partitions": partitions, "part": f"{part[0]}/{part[1]}", "removed": len(plan.remove),
        "live_before": plan.live_before, "live_after": plan.live_after,
        "keep_days": plan.keep_days, "max_partitions": plan.max_partitions,
        "deliveries": [{"id": x, "settled": why[x][0].why, "at": why[x][0].at, "rule": why[x][1],
                        **({"version": why[x][0].version} if why[x][0].version else {})} for x in ids],
    })
