"""Run the lab's Dagster jobs in-process on the lab's own Dagster instance.

``datalab run`` and ``datalab publish`` use this so that scripted and CI runs
go through the same definitions as the UI, and show up there: the instance
lives under ``$DATALAB_HOME/dagster``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from datalab import contract as contracts_mod
from datalab import state
from datalab.config import settings
from datalab.errors import DatalabError, NotFound

# In-process runs log to the console at DEBUG by default; the CLI prints its
# own summary, and the full event log stays in the instance for the UI. A failed
# step is reported by the CLI in one line (``_error``); Dagster's own ERROR
# record of it carries a stack trace, which a user's mistake must not print
# (issue 20), so only CRITICAL reaches the console. The UI keeps every record.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class DeliveryRun:
    contract_id: str
    delivery_id: str
    success: bool
    validation_ok: bool | None
    message: str


def instance() -> dg.DagsterInstance:
    s = settings()
    s.dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(s.dagster_home)
    cfg = s.dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def _defs() -> dg.Definitions:
    from pipelines.definitions import build_definitions

    return build_definitions()


def _error(result: dg.ExecuteInProcessResult) -> str:
    """The reason a run failed, in one message: a failed asset check names itself and its problems."""
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            ev_data = ev.event_specific_data
            if ev_data is not None and not ev_data.passed:
                md = ev_data.metadata or {}
                problems = md.get("problems")
                text = str(getattr(problems, "value", problems) or "").replace("\n- ", "; ").lstrip("- ")
                return f"asset check {ev_data.check_name} failed on {ev_data.asset_key.to_user_string()}: {text}"
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE" and ev.step_failure_data and ev.step_failure_data.error:
            err = ev.step_failure_data.error
            while err.cause is not None and "DagsterExecutionStepExecutionError" in (err.cls_name or ""):
                err = err.cause
            return err.message.strip()
    return "the run failed"


def run_pending(contract_ref: str | None = None, on_event: Callable[[DeliveryRun], None] | None = None) -> list[DeliveryRun]:
    """Materialise every accepted, not yet validated delivery (optionally of one contract)."""
    from pipelines.definitions import ingest_job_name

    s = settings()
    contracts = contracts_mod.load_all(s.contracts_dir)
    chosen = [contracts_mod.find(contracts, contract_ref)] if contract_ref else sorted(contracts.values(), key=lambda c: c.slug)
    defs = _defs()
    inst = instance()
    out = []
    for c in chosen:
        if c.kind not in ("timeseries", "cad"):
            continue
        job = defs.resolve_job_def(ingest_job_name(c))
        parts_name = f"{c.slug}__deliveries"
        for d in state.pending(c.id, s):
            if not inst.has_dynamic_partition(parts_name, d):
                inst.add_dynamic_partitions(parts_name, [d])
            result = job.execute_in_process(partition_key=d, instance=inst, raise_on_error=False, run_config=QUIET,
                                            tags={"datalab/delivery": d, "datalab/source": "cli"})
            st = state.get(d, s) or {}
            ok = result.success
            msg = "validated" if st.get("validation_ok") else ("validation failed" if st.get("validation_ok") is False else _error(result))
            if not ok and st.get("stage") not in ("validated", "failed"):
                state.set_stage(d, "failed", s=s, stats={"error": msg})
            run = DeliveryRun(c.id, d, ok, st.get("validation_ok"), msg)
            out.append(run)
            if on_event:
                on_event(run)
    return out


def publish(dataset: str) -> dict:
    """Materialise the dataset asset (publishes a version if anything changed)."""
    from pipelines.definitions import publish_job_name

    defs = _defs()
    job = defs.resolve_job_def(publish_job_name(dataset)) if _has_job(defs, publish_job_name(dataset)) else None
    if job is None:
        raise NotFound(f"no dataset {dataset!r} (the dataset specs are in data_contracts/datasets/)")
    result = job.execute_in_process(instance=instance(), raise_on_error=False, run_config=QUIET, tags={"datalab/source": "cli"})
    if not result.success:
        raise DatalabError(_error(result))
    mats = result.asset_materializations_for_node(result.all_node_events[0].node_name) if result.all_node_events else []
    md = {k: v.value for k, v in mats[-1].metadata.items()} if mats else {}
    return md


def _has_job(defs: dg.Definitions, name: str) -> bool:
    try:
        defs.resolve_job_def(name)
        return True
    except Exception:
        return False
