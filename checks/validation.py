"""The blocking asset check that runs a contract's expectation suite.

The suite is derived from the contract by ``datalab.quality.validate`` and merged
with any hand-written suite in ``checks/suites/<contract slug>.json``. The
check is blocking: when it fails, nothing downstream runs in that run, the
delivery is marked failed and publishing leaves it out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from assets.common import partitions_read_once
from datalab.config import Settings
from datalab.contracts.contract import Contract
from datalab.quality.validate import PartSuite, ValidationReport
from datalab.store import state


def suite_check_spec(contract: Contract, asset_key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name="contract_suite",
        asset=asset_key,
        blocking=True,
        description=f"Great Expectations suite derived from {contract.id} v{contract.version} (plus checks/suites/{contract.slug}.json if present).",
    )


def validated_deliveries(context: dg.AssetExecutionContext, s: Settings,
                         one: Callable[[str], tuple[dict[str, Any], ValidationReport]]) -> dg.MaterializeResult:
    """The curated asset's result over the run's deliveries (one, or a range): ``one(d)`` curates and validates ``d``.

    Each delivery gets its own metadata on its own partition. In a run over
    several, the verdicts are recorded only once every delivery is curated
    and validated: a step that fails half way leaves none of them settled,
    and each is then run alone (pipelines/runner.py, the run-failure sensor).
    """
    verdicts: list[tuple[str, ValidationReport]] = []
    with partitions_read_once(context.instance):  # add_asset_metadata reads every key of the contract's partitions
        keys = context.partition_keys
        for d in keys:
            md, report = one(d)
            if not report.success:
                context.log.warning(f"delivery {d}: {report.failed} of {report.evaluated} expectations failed")
            if len(keys) == 1:
                record_verdict(d, report, s)
                return dg.MaterializeResult(metadata=md, check_results=[check_result(d, report)])
            context.add_asset_metadata(md, partition_key=d)
            verdicts.append((d, report))
    for d, report in verdicts:
        record_verdict(d, report, s)
    return dg.MaterializeResult(metadata={"deliveries": dg.MetadataValue.int(len(keys))},
                                check_results=[batch_check_result(verdicts)])


def suite_report(contract: Contract, delivery_id: str, path: Path | pl.DataFrame,
                 curation_stats: dict[str, Any] | None = None, parts: PartSuite | None = None) -> ValidationReport:
    """The suite's report on one curated delivery (its file, or the table as written); nothing recorded yet (``record_verdict``).

    ``curation_stats``: the curation's statistics (``CurationStats.to_dict()``)
    for the lab's rules, when the caller has them; else they are read from the
    delivery's state. ``parts``: the suite already evaluated on the parts of
    a delivery curated in parts (``validate.PartSuite``; see ``validate.validate``).
    """
    from datalab.quality import validate

    return validate.validate(contract, path, run_name=delivery_id, curation_stats=curation_stats, parts=parts)


def record_verdict(delivery_id: str, report: ValidationReport, s: Settings) -> None:
    """The delivery's verdict in the lab's state: from here on it is settled (validated or failed)."""
    state.set_stage(delivery_id, "validated" if report.success else "failed", s=s,
                    validation_ok=report.success, validation=report.to_dict())


def _failed_md(report: ValidationReport) -> str:
    lines = [f"| {r.type} | {r.column or ''} | {r.sensor or ''} | {r.unexpected_count} | "
             f"{r.unexpected_percent} | {list(r.sample_values)} |" for r in report.failed_results()]
    return ("| expectation | column | sensor | unexpected | % | samples |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
            if lines else "all expectations passed")


def check_result(delivery_id: str, report: ValidationReport) -> dg.AssetCheckResult:
    """The check's evaluation of one delivery, as the UI shows it."""
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
            "failed_expectations": dg.MetadataValue.md(_failed_md(report)),
            "data_docs": dg.MetadataValue.path(report.docs_path or ""),
            # "polars" (datalab.quality.fast: no Data Docs) or "great_expectations"
            "engine": report.engine,
        },
    )


def batch_check_result(verdicts: list[tuple[str, ValidationReport]]) -> dg.AssetCheckResult:
    """One evaluation for a run over several deliveries (a partition range): passed when every one passed.

    Dagster records a check once per run, not per partition of a range; the
    per-delivery verdicts are in its table and in each delivery's state.
    """
    failed = [(d, r) for d, r in verdicts if not r.success]
    rows = "\n".join(f"| {d} | {'passed' if r.success else 'failed'} | {r.evaluated} | {r.failed} | "
                     f"{', '.join(sorted({x.type for x in r.failed_results()}))} |" for d, r in verdicts)
    return dg.AssetCheckResult(
        check_name="contract_suite",
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "deliveries": len(verdicts),
            "failed_deliveries": ", ".join(d for d, _ in failed) or "none",
            "seconds": dg.MetadataValue.float(round(sum(r.seconds for _, r in verdicts), 3)),
            "verdicts": dg.MetadataValue.md("| delivery | verdict | evaluated | failed | failed expectation types |\n"
                                            "|---|---|---|---|---|\n" + rows),
            "engine": ", ".join(sorted({r.engine for _, r in verdicts})),
        },
    )
