"""The lab's Dagster definitions, built from the contracts in ``data_contracts/``.

Per time-series or CAD contract: raw and curated assets on a dynamic partition per
delivery, the blocking suite check, an ingest job, a sensor that adds a
partition for every accepted delivery (never past ``DATALAB_MAX_PARTITIONS``)
and requests runs over ranges of them (up to ``DATALAB_RUN_BATCH`` each), and
a run-failure sensor that runs each delivery of a failed range alone. Per dataset spec: a dataset asset and a publish
job. Lab-wide: retention and the partition roll-up (``pipelines/rollup.py``).
``workspace.yaml`` loads this module; the ``datalab`` CLI runs the same jobs
in-process.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from assets.common import RANGE_END, RANGE_START, partitions_for, range_request
from assets.datasets import build_dataset_asset
from assets.registry import factory_for
from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts import datasets
from datalab.contracts.contract import Contract
from datalab.errors import ContractError
from datalab.runs import plan_batches
from datalab.store import state
from pipelines import rollup
from pipelines.cluster import CONTRACT_TAG

MAX_RUNS_PER_TICK = 25


def ingest_job_name(c: Contract) -> str:
    return f"ingest__{c.slug}"


def publish_job_name(dataset: str) -> str:
    return f"publish__{dataset.replace('-', '_')}"


def _sensor(c: Contract, job: dg.UnresolvedAssetJobDefinition, s: Settings) -> dg.SensorDefinition:
    parts = partitions_for(c)

    @dg.sensor(name=f"deliveries__{c.slug}", job=job, minimum_interval_seconds=s.sensor_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Adds a partition for each accepted delivery of {c.id} and requests ingest runs over them (DATALAB_RUN_BATCH each).")
    def deliveries(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # One bounded page per tick, after the cursor (the last delivery id
        # seen); at the end the cursor wraps to the start, so a delivery that
        # committed late with a smaller id is still picked up on the next
        # pass, and run_key keeps a delivery from running twice. A rolled-up
        # (settled) delivery is never pending, so it is never added again.
        cursor = context.cursor or ""
        page = state.pending_page(c.id, after=cursor, limit=MAX_RUNS_PER_TICK)
        if not page and cursor:
            cursor = ""
            page = state.pending_page(c.id, after="", limit=MAX_RUNS_PER_TICK)
        existing = context.instance.get_existing_dynamic_partitions(parts.name, page) if page else set()
        new = [d for d in page if d not in existing]
        after = page[-1] if page else cursor
        if new:
            # Never past DATALAB_MAX_PARTITIONS: at the bound, roll up the earliest settled
            # deliveries first (pipelines/rollup.py); add only what fits, and keep the place.
            live = list(context.instance.get_dynamic_partitions(parts.name))
            if len(live) + len(new) > s.max_partitions:
                rep = rollup.make_room(context.instance, c, s, live, len(new), actor=f"dagster:sensor:deliveries__{c.slug}")
                if rep.removed:
                    context.log.info(rep.line())
                room = max(0, s.max_partitions - rep.live_after)
                if room == 0:
                    return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(
                        f"{rep.live_after} live partitions of {parts.name}, the bound (DATALAB_MAX_PARTITIONS="
                        f"{s.max_partitions}), and none settled to roll up: {len(new)} or more accepted deliveries "
                        "wait. A delivery settles when a published version holds it, its validation fails, or "
                        "retention deletes it: publish the validated deliveries, or raise the bound."))
                if room < len(new):
                    new = new[:room]
                    after = new[-1]  # the next tick goes on after the last one added
        # neighbouring new partitions go in runs of up to DATALAB_RUN_BATCH (a range each)
        batches = plan_batches(new, new, state.rows_of(new, s) if len(new) > 1 else {}, s.run_batch)
        return dg.SensorResult(
            run_requests=[range_request(b) for b in batches],
            dynamic_partitions_requests=[parts.build_add_request(new)] if new else [],
            cursor=after,
        )

    return deliveries


def _alone_after_failed_batch(c: Contract, job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    """A failed run over several deliveries: each it left unsettled gets a run of its own.

    The curated asset records a range's verdicts only once all of them are
    reached, so a run that breaks half way settles none; alone, each
    delivery gets its own verdict or its own error, as without batches.
    """
    parts = partitions_for(c)

    @dg.run_failure_sensor(name=f"deliveries_alone__{c.slug}", monitored_jobs=[job], request_job=job,
                           default_status=dg.DefaultSensorStatus.RUNNING,
                           description=f"Runs each delivery of a failed batch run of {c.id} alone.")
    def alone(context: dg.RunFailureSensorContext) -> list[dg.RunRequest]:
        tags = context.dagster_run.tags
        if RANGE_START not in tags:
            return []
        keys = list(context.instance.get_dynamic_partitions(parts.name))
        try:
            covered = keys[keys.index(tags[RANGE_START]):keys.index(tags[RANGE_END]) + 1]
        except ValueError:  # rolled up meanwhile: settled
            return []
        waiting = set(state.pending(c.id))
        return [range_request([d], run_key=f"alone:{d}") for d in covered if d in waiting]

    return alone


def _broken_contracts_sensor(contracts: contracts_mod.Contracts) -> dg.SensorDefinition:
    """A sensor whose every tick names the provider contracts that do not load (the UI's report of them)."""
    broken = dict(contracts.broken)
    text = "; ".join(f"{Path(p).parent.name}/{Path(p).name}: {' | '.join(pr)}" for p, pr in sorted(broken.items()))

    @dg.sensor(name="contracts_broken", minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
               description=(f"{len(broken)} broken provider contract(s): {text}" if broken
                            else "Every provider contract loads."))
    def contracts_broken(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(f"{len(broken)} broken provider contract(s){': ' + text if broken else ''}")

    return contracts_broken


def build_definitions() -> dg.Definitions:
    s = settings()
    contracts = contracts_mod.load_all(s.contracts_dir)
    assets, jobs, sensors = [], [], []
    for c in sorted(contracts.values(), key=lambda c: c.slug):
        factory = factory_for(c)  # the asset factory of the contract's kind (assets/registry.py)
        if factory is None:
            continue
        built = factory(c)
        assets += built
        job = dg.define_asset_job(ingest_job_name(c), selection=dg.AssetSelection.assets(*built),
                                  partitions_def=partitions_for(c), tags={"tenant": c.tenant, CONTRACT_TAG: c.slug})
        jobs.append(job)
        sensors += [_sensor(c, job, s), _alone_after_failed_batch(c, job)]
    sensors.append(_broken_contracts_sensor(contracts))
    for name in datasets.list_specs(s.contracts_dir):
        try:
            spec = datasets.load_spec(s.contracts_dir, name, contracts)
        except ContractError as e:
            # A dataset that federates a broken contract waits for its fix;
            # every other dataset and contract stays in the UI.
            logging.getLogger(__name__).warning("dataset %s is left out of the definitions: %s", name, e)
            continue
        a = build_dataset_asset(spec, contracts)
        assets.append(a)
        jobs.append(dg.define_asset_job(publish_job_name(name), selection=dg.AssetSelection.assets(a)))
    from pipelines.resources import lab_resource
    from pipelines.retention import retention_daily, retention_enforce

    return dg.Definitions(assets=assets, jobs=[*jobs, retention_enforce, rollup.partitions_rollup], sensors=sensors,
                          schedules=[retention_daily, rollup.partitions_rollup_daily], executor=executor_for(s),
                          resources={"lab": lab_resource(s)})


def executor_for(s: Settings) -> dg.ExecutorDefinition:
    """In-process for the local profile; Celery workers for the cluster profile (docs/scale.md).

    The Celery executor is dagster-celery's with a bound on every wait for a
    step (pipelines/celery_watch.py): a step no worker will run fails or is
    submitted again instead of keeping the run waiting forever.
    """
    if s.profile != "cluster":
        return dg.in_process_executor
    from pipelines.celery_watch import watched_celery_executor
    from pipelines.cluster import executor_config

    return watched_celery_executor.configured(executor_config(s))


# The settings ``defs`` was built for: the runner refuses to drive a cluster
# run from a process whose settings changed since (pipelines.runner._execute).
BUILT_WITH = settings()
defs = build_definitions()
