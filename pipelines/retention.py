"""Retention in Dagster: a daily schedule runs ``retention_enforce``.

The core (:mod:`datalab.policy.retention`) deletes the data from the lab's storage;
this module adds what only Dagster can delete: the runs (and their event
logs, whose materialisation metadata carries row previews) of the purged
deliveries and of the withdrawn versions, the delivery partitions, and the
contract's raw/curated asset history.
"""


import shutil
from typing import Any

import dagster as dg
from dagster import OpExecutionContext

from datalab.config import Settings
from datalab.contracts import contract as contracts_mod
from datalab.policy import retention
from pipelines.resources import LabResource

RETENTION_CRON = "15 2 * * *"  # daily, 02:15 lab time


def purge_dagster(contract_id: str, deliveries: list[str], versions: list[tuple[str, str]], s: Settings) -> dict[str, Any]:
    """Delete the Dagster records of purged deliveries and withdrawn versions."""
    from assets.common import key_prefix
    from pipelines.cluster import instance

    inst = instance(s)
    runs: set[str] = set()
    for d in deliveries:
        for rec in inst.get_run_records(filters=dg.RunsFilter(tags={"dagster/partition": d})):
            runs.add(rec.dagster_run.run_id)
    contracts = contracts_mod.load_all(s.contracts_dir)
    c = contracts.get(contract_id)
    parts_name = f"{c.slug}__deliveries" if c else None
    dataset_keys = {dg.AssetKey(["datasets", n.replace("-", "_")]) for n, _ in versions}
    for name, version in versions:
        key = dg.AssetKey(["datasets", name.replace("-", "_")])
        for ev in inst.fetch_materializations(key, limit=1000).records:
            mat = ev.asset_materialization
            if mat is not None and mat.metadata.get("version") is not None and mat.metadata["version"].value == version:
                runs.add(ev.run_id)
    latest_deleted = []
    for key in sorted(dataset_keys, key=lambda k: k.to_user_string()):
        recs = inst.fetch_materializations(key, limit=1).records
        if recs and recs[0].run_id in runs:
            latest_deleted.append(key)
    for run_id in sorted(runs):
        inst.delete_run(run_id)
        shutil.rmtree(s.dagster_home / "storage" / run_id, ignore_errors=True)
    if parts_name:
        for d in deliveries:
            if inst.has_dynamic_partition(parts_name, d):
                inst.delete_dynamic_partition(parts_name, d)
    wiped = []
    if c is not None:
        keys = [dg.AssetKey([*key_prefix(c), x]) for x in ("raw", "curated")]
        inst.wipe_assets(keys)
        wiped = [k.to_user_string() for k in keys]
    for key in latest_deleted:
        # The asset's cached latest materialisation (with the card) belonged
        # to a deleted run and Dagster cannot rebuild that cache: wipe the
        # asset's Dagster history; the lab's catalog keeps every version.
        inst.wipe_assets([key])
        wiped.append(key.to_user_string())
    return {"runs_deleted": len(runs), "assets_wiped": wiped}


def enforce(context: OpExecutionContext | None = None, s: Settings | None = None) -> list[retention.PurgeReport]:
    reports = retention.enforce(actor="dagster:retention", s=s, hook=purge_dagster)
    if context is not None:
        for r in reports:
            context.log.info(f"{r.contract_id}: {r.status}, {len(r.deliveries)} deliveries, {r.files_deleted} files, "
                             f"versions withdrawn {r.versions_withdrawn}")
    return reports


@dg.op(description="Delete data past retention_until everywhere, withdraw the versions holding it.")
def retention_enforce_op(context: OpExecutionContext, lab: LabResource) -> dg.Output[int]:
    reports = enforce(context, lab.settings())
    return dg.Output(len(reports), metadata={
        "contracts_purged": dg.MetadataValue.int(len(reports)),
        "deliveries_deleted": dg.MetadataValue.int(sum(len(r.deliveries) for r in reports)),
        "bytes_deleted": dg.MetadataValue.int(sum(r.bytes_deleted for r in reports)),
        "versions_withdrawn": dg.MetadataValue.text(", ".join(v for r in reports for v in r.versions_withdrawn) or "none"),
    })


@dg.job(name="retention_enforce", description="Enforce retention_until: delete expired deliveries, withdraw their versions.")
def retention_enforce() -> None:
    retention_enforce_op()


retention_daily = dg.ScheduleDefinition(
    name="retention_daily", job=retention_enforce, cron_schedule=RETENTION_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily retention enforcement (datalab.policy.retention).",
)
