"""The blocking asset check that runs a contract's expectation suite.

The suite is derived from the contract by ``datalab.quality.validate`` and merged
with any hand-written suite in ``checks/suites/<contract slug>.json``. The
check is blocking: when it fails, nothing downstream runs in that run, the
delivery is marked failed and publishing leaves it out.
"""

from __future__ import annotations

import dagster as dg

from datalab.config import Settings, settings
from datalab.contracts.contract import Contract
from datalab.store import state


def suite_check_spec(contract: Contract, asset_key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name="contract_suite",
        asset=asset_key,
        blocking=True,
        description=f"Great Expectations suite derived from {contract.id} v{contract.version} (plus checks/suites/{contract.slug}.json if present).",
    )


def run_suite_check(contract: Contract, delivery_id: str, path, context: dg.AssetExecutionContext | None = None,
                    s: Settings | None = None) -> dg.AssetCheckResult:
    """Validate the curated delivery and record the outcome; ``s``: the run's settings (the ``lab`` resource's)."""
    from datalab.quality import validate

    report = validate.validate(contract, path, run_name=delivery_id)
    failed = report.failed_results()
    state.set_stage(
        delivery_id, "validated" if report.success else "failed", s=s or settings(),
        validation_ok=report.success, validation=report.to_dict(),
    )
    lines = [f"| {r.type} | {r.column or ''} | {r.sensor or ''} | {r.unexpected_count} | "
             f"{r.unexpected_percent} | {list(r.sample_values)} |" for r in failed]
    md = "| expectation | column | sensor | unexpected | % | samples |\n|---|---|---|---|---|---|\n" + "\n".join(lines) if lines else "all expectations passed"
    if context is not None and not report.success:
        context.log.warning(f"delivery {delivery_id}: {report.failed} of {report.evaluated} expectations failed")
    return dg.AssetCheckResult(
        check_name="contract_suite",
        passed=report.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "delivery_id": delivery_id,
            "evaluated": report.evaluated,
            "successful": report.successful,
            "failed": report.failed,
            "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
            "failed_expectations": dg.MetadataValue.md(md),
            "data_docs": dg.MetadataValue.path(report.docs_path or ""),
            # "polars" (datalab.quality.fast: no Data Docs) or "great_expectations"
            "engine": report.engine,
        },
    )
