"""The roll-up of delivery partitions: Dagster's side of ``datalab.store.state.plan_rollup``.

Every accepted delivery becomes one dynamic partition of its contract
(``<slug>__deliveries``, added by the delivery sensor). Dagster advises at
most 100,000 partitions per asset, and a firm that pushes every few seconds
would pass that in days, so a partition does not live for ever: once its
delivery is settled (published, rejected at validation, expired or
withdrawn: :func:`datalab.store.state.settled`, in the core) no run needs
it again, and ``DATALAB_PARTITION_KEEP_DAYS`` after it settled the roll-up
deletes the partition key. ``DATALAB_MAX_PARTITIONS`` bounds the live
partitions of each contract: past it the earliest settled go first,
whatever their age, and the delivery sensor rolls up before it adds (or
adds nothing, with the reason, when nothing is settled).

What stays: the delivery's receipt, processing state, validation and
lineage in the catalog, its runs and materialisations in Dagster's event
log; each roll-up is in the audit log (action ``rollup``). Run daily by the
schedule ``partitions_rollup_daily``, at the bound by the sensor, and by
``datalab partitions rollup [--dry-run]`` (through the runner, ``datalab.runs.Runner.rollup``).
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster import OpExecutionContext

from assets.registry import factory_for
from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts.contract import Contract
from datalab.store import state
from pipelines.resources import LabResource

ROLLUP_CRON = "45 2 * * *"  # daily, 02:45 lab time: after retention (02:15), which settles what it deletes
# Removals one sensor tick may make (about 2 ms each on SQLite): the tick stays short; the next tick,
# or the daily job, goes on.
SENSOR_ROLLUP_LIMIT = 1000
# A run of a partition that is queued or running keeps its partition.
UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def partitions_name(c: Contract) -> str:
    """The contract's dynamic partitions (``assets.common.partitions_for``)."""
    return f"{c.slug}__deliveries"


@dataclass
class RollupReport:
    """One contract's roll-up: what it removed (or would, in a dry run) and what is left."""

    contract_id: str
    partitions: str
    live_before: int
    live_after: int
    max_partitions: int
    keep_days: int
    removed: list[dict[str, Any]] = field(default_factory=list)
    settled_kept: int = 0
    dry_run: bool = False
    audit: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.removed:
            out[r["settled"]] = out.get(r["settled"], 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"contract": self.contract_id, "summary": self.line(), "partitions": self.partitions, "dry_run": self.dry_run,
                "live_before": self.live_before, "live_after": self.live_after,
                "max_partitions": self.max_partitions, "keep_days": self.keep_days,
                "removed": len(self.removed), "by_reason": self.counts(), "settled_kept": self.settled_kept,
                "deliveries": self.removed, "audit": self.audit}

    def line(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        why = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        return (f"{self.contract_id}: {verb} {len(self.removed)} partition(s){f' ({why})' if why else ''}; "
                f"live {self.live_before} -> {self.live_after} of at most {self.max_partitions}; "
                f"{self.settled_kept} settled kept (settled less than {self.keep_days} day(s) ago)")


def busy_partitions(inst: dg.DagsterInstance) -> set[str]:
    """Partitions with a run that is queued or in progress (one query over unfinished runs)."""
    recs = inst.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED))
    return {k for r in recs if (k := r.dagster_run.tags.get("dagster/partition"))}


def rollup_contract(inst: dg.DagsterInstance, c: Contract, s: Settings, actor: str, need: int = 0,
                    dry_run: bool = False, now: dt.datetime | None = None, limit: int | None = None,
                    live: list[str] | None = None) -> RollupReport:
    """Plan (in the core) and apply (here) the roll-up of one contract's partitions.

    Deletes in chunks, each chunk audited once its keys are gone, so the
    audit log names exactly what was removed, even if the process stops
    half-way (a re-run then removes the rest).
    """
    name = partitions_name(c)
    live = list(inst.get_dynamic_partitions(name)) if live is None else live
    settled = state.settled(c.id, among=live, s=s) if live else []
    plan = state.plan_rollup(live, settled, now or dt.datetime.now(dt.UTC), s.partition_keep_days,
                             s.max_partitions, need=need, busy=busy_partitions(inst) if settled else (), limit=limit)
    rep = RollupReport(c.id, name, plan.live_before, plan.live_before, s.max_partitions, s.partition_keep_days,
                       settled_kept=plan.settled_kept, dry_run=dry_run)
    rows = [{"id": d.delivery_id, "settled": d.why, "at": d.at, "rule": rule, **({"version": d.version} if d.version else {})}
            for d, rule in plan.remove]
    if dry_run:
        rep.removed = rows
        rep.live_after = plan.live_after
        return rep
    parts = (len(rows) + state.AUDIT_CHUNK - 1) // state.AUDIT_CHUNK
    for k in range(parts):
        chunk = rows[k * state.AUDIT_CHUNK:(k + 1) * state.AUDIT_CHUNK]
        for r in chunk:
            inst.delete_dynamic_partition(name, r["id"])
        rep.removed += chunk
        rep.live_after -= len(chunk)
        seq = state.record_rollup(c.id, name, plan, [r["id"] for r in chunk], actor, s, part=(k + 1, parts))
        if seq is not None:
            rep.audit.append(seq)
    rep.live_after = plan.live_before - len(rep.removed)
    return rep


def partitioned_contracts(s: Settings) -> list[Contract]:
    """The contracts whose kind has Dagster assets (so a partitions definition), by slug."""
    contracts = contracts_mod.load_all(s.contracts_dir)
    return [c for c in sorted(contracts.values(), key=lambda c: c.slug) if factory_for(c) is not None]


def rollup(inst: dg.DagsterInstance, s: Settings | None = None, actor: str = "dagster:rollup", dry_run: bool = False,
           now: dt.datetime | None = None) -> list[RollupReport]:
    """Roll up every contract's settled partitions (the daily job and the CLI)."""
    s = s or settings()
    return [rollup_contract(inst, c, s, actor, dry_run=dry_run, now=now) for c in partitioned_contracts(s)]


@dg.op(description="Delete the partition keys of settled deliveries past DATALAB_PARTITION_KEEP_DAYS, and past "
                   "DATALAB_MAX_PARTITIONS the earliest settled; audited, the catalog keeps each delivery.")
def partitions_rollup_op(context: OpExecutionContext, lab: LabResource) -> dg.Output[int]:
    reports = rollup(context.instance, lab.settings())
    for r in reports:
        if r.removed:
            context.log.info(r.line())
    removed = sum(len(r.removed) for r in reports)
    return dg.Output(removed, metadata={
        "partitions_removed": dg.MetadataValue.int(removed),
        "live_partitions": dg.MetadataValue.json({r.partitions: r.live_after for r in reports}),
        "max_partitions": dg.MetadataValue.int(lab.settings().max_partitions),
    })


@dg.job(name="partitions_rollup", description="Roll up the dynamic partitions of settled deliveries (docs/scale.md).")
def partitions_rollup() -> None:
    partitions_rollup_op()


partitions_rollup_daily = dg.ScheduleDefinition(
    name="partitions_rollup_daily", job=partitions_rollup, cron_schedule=ROLLUP_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily roll-up of settled deliveries' partitions (pipelines.rollup).",
)


def make_room(inst: dg.DagsterInstance, c: Contract, s: Settings, live: list[str], need: int,
              actor: str) -> RollupReport:
    """The sensor at the bound: roll up (at most SENSOR_ROLLUP_LIMIT) so that ``need`` partitions fit."""
    return rollup_contract(inst, c, s, actor, need=need, limit=SENSOR_ROLLUP_LIMIT, live=live)
