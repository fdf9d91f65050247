"""Small deliveries in one Dagster run (issue 21): a partition range, each delivery with its own verdict.

Real Dagster instance under a temp home, real pushes; the batch run must give
every delivery the same curated file and verdict as a run of its own, and a
batch that breaks half way must leave each delivery to its own run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from assets.common import md_table
from datalab.intake import landing
from datalab.runs import plan_batches
from datalab.store import state
from datalab.timeseries import curate, sample
from tests.conftest import PRESS, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def _push(contracts, tmp: Path, cid: str, n: int, rows: int = 400, first_seed: int = 0, defects=None) -> list[str]:
    c = contracts[cid]
    out = []
    for i in range(first_seed, first_seed + n):
        p = sample.write(sample.generate(c, rows, seed=i, start=START + dt.timedelta(days=i), defects=defects),
                         tmp / f"{c.product}-{i}.csv")
        out.append(landing.push(c, [p], actor=f"firm:{c.tenant}").delivery_id)
    return out


def test_plan_batches_cuts_at_gaps_counts_and_rows() -> None:
    order = [f"d{i}" for i in range(10)]
    pending = ["d1", "d2", "d3", "d5", "d6", "d7", "d8", "d9", "x"]  # d4 settled, x has no partition
    rows = {d: 10 for d in order} | {"d8": 1_000}
    assert plan_batches(pending, order, rows, most=50) == [["d1", "d2", "d3"], ["d5", "d6", "d7", "d8", "d9"]]
    assert plan_batches(pending, order, rows, most=2) == [["d1", "d2"], ["d3"], ["d5", "d6"], ["d7", "d8"], ["d9"]]
    # a delivery over the rows bound runs alone; the bound counts the run's rows together
    assert plan_batches(pending, order, rows, most=50, most_rows=100) == [["d1", "d2", "d3"], ["d5", "d6", "d7"],
                                                                         ["d8"], ["d9"]]
    assert plan_batches(["d3", "d1"], order, {}, most=50) == [["d1"], ["d3"]]
    assert plan_batches([], order, {}, most=50) == []


def _checks(inst, run_id: str) -> list:
    import dagster as dg

    recs = inst.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return [r.event_log_entry.dagster_event.event_specific_data for r in recs]


def test_a_backlog_runs_in_batches_with_a_verdict_and_metadata_per_delivery(lab: Path, tmp_path: Path, contracts,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from datalab.config import settings
    from pipelines import runner

    monkeypatch.setenv("DATALAB_RUN_BATCH", "4")
    good = _push(contracts, tmp_path, SPINDLE, 5)
    bad = _push(contracts, tmp_path, SPINDLE, 1, first_seed=5, defects=sample.Defects(spikes=0.2))
    press = _push(contracts, tmp_path, PRESS, 2)
    seen = []
    out = runner.run_pending(on_event=seen.append)
    assert [r.delivery_id for r in out] == [r.delivery_id for r in seen]
    by = {r.delivery_id: r for r in out}
    assert set(by) == {*good, *bad, *press}
    assert all(by[d].validation_ok and by[d].message == "validated" for d in good + press)
    assert by[bad[0]].validation_ok is False and by[bad[0]].message == "validation failed" and not by[bad[0]].success
    for d in good + press:
        assert state.get(d)["stage"] == "validated"
    assert state.get(bad[0])["stage"] == "failed"

    inst = runner.instance()
    runs = inst.get_runs()
    # spindle: 4 + 2 (the second holds the failing one), press: 2 -> three runs, none per delivery
    assert len(runs) == 3
    ranges = sorted((r.tags[runner.RANGE_START], r.tags[runner.RANGE_END]) for r in runs)
    assert ranges == sorted([(good[0], good[3]), (good[4], bad[0]), (press[0], press[1])])
    # each delivery has its own materialisation of raw and curated, with its own metadata
    slug = contracts[SPINDLE].slug
    key = dg.AssetKey(["bavaria_spindle", "spindle_telemetry", "curated"])
    mats = inst.fetch_materializations(key, limit=100).records
    md = {m.partition_key: m.asset_materialization.metadata for m in mats}
    assert set(md) == {*good, *bad}
    for d in good + bad:
        assert md[d]["delivery_id"].value == d
        curated = pl.read_parquet(curate.curated_path(contracts[SPINDLE], d, settings()))
        assert md[d]["rows_out"].value == curated.height
        # the preview (handed over from the table as written) is the file's first rows
        assert md[d]["preview"].value == md_table(curated.head(10)).value
    raws = inst.fetch_materializations(dg.AssetKey(["bavaria_spindle", "spindle_telemetry", "raw"]), limit=100).records
    assert {m.partition_key for m in raws} == {*good, *bad}
    # one check evaluation per run: passed where all passed, failed naming the failing delivery
    run_of = {r.tags[runner.RANGE_START]: r for r in runs}
    [ok_check] = _checks(inst, run_of[good[0]].run_id)
    [bad_check] = _checks(inst, run_of[good[4]].run_id)
    assert ok_check.passed and ok_check.metadata["deliveries"].value == 4
    assert not bad_check.passed and bad_check.metadata["failed_deliveries"].value == bad[0]
    assert slug  # the contract's partitions hold every delivery once
    assert sorted(inst.get_dynamic_partitions(f"{slug}__deliveries")) == sorted(good + bad)
    assert runner.run_pending() == []  # nothing left


def test_a_batch_that_breaks_leaves_each_delivery_to_its_own_run(lab: Path, tmp_path: Path, contracts,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery whose raw table is gone breaks the batch's step: the others are validated alone, it fails alone."""
    from datalab.config import settings
    from datalab.timeseries import ingest
    from pipelines import runner

    ds = _push(contracts, tmp_path, SPINDLE, 3)
    c = contracts[SPINDLE]
    real = ingest.ingest_raw

    def broken(contract, d, s):  # the landed bytes of the middle delivery are unreadable to this run
        if d == ds[1]:
            raise OSError(f"{d}: landed file unreadable (test)")
        return real(contract, d, s)

    monkeypatch.setattr(ingest, "ingest_raw", broken)
    out = {r.delivery_id: r for r in runner.run_pending()}
    assert out[ds[0]].validation_ok and out[ds[2]].validation_ok
    assert not out[ds[1]].success and "landed file unreadable" in out[ds[1]].message
    assert state.get(ds[1])["stage"] == "failed"
    runs = runner.instance().get_runs()
    # the batch, then one run per delivery it did not settle
    assert sorted(r.tags.get("datalab/delivery") or "batch" for r in runs) == sorted(["batch", *ds])
    assert curate.curated_path(c, ds[0], settings()).exists()


def test_one_run_per_delivery_when_batches_are_off(lab: Path, tmp_path: Path, contracts,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import runner

    monkeypatch.setenv("DATALAB_RUN_BATCH", "1")
    ds = _push(contracts, tmp_path, SPINDLE, 3)
    assert all(r.validation_ok for r in runner.run_pending())
    assert sorted(r.tags["datalab/delivery"] for r in runner.instance().get_runs()) == sorted(ds)


def test_the_daemon_runs_each_delivery_of_a_failed_range_alone(lab: Path, tmp_path: Path, contracts,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A range run launched as the sensor launches it breaks on one delivery; the run-failure sensor
    requests a run of its own for each delivery the range left pending, and none for a settled one."""
    import dagster as dg

    from assets.common import RANGE_END, RANGE_START
    from datalab.config import settings
    from datalab.timeseries import ingest
    from pipelines import runner
    from pipelines.definitions import build_definitions, ingest_job_name

    c = contracts[SPINDLE]
    ds = _push(contracts, tmp_path, SPINDLE, 3)
    inst = runner.instance()
    inst.add_dynamic_partitions(f"{c.slug}__deliveries", ds)
    real = ingest.ingest_raw

    def broken(contract, d, s):
        if d == ds[2]:
            raise OSError(f"{d}: landed file unreadable (test)")
        return real(contract, d, s)

    monkeypatch.setattr(ingest, "ingest_raw", broken)
    defs = build_definitions()
    res = runner._execute(ingest_job_name(c), inst, {RANGE_START: ds[0], RANGE_END: ds[2]}, defs=defs, s=settings())
    assert not res.success
    assert all((state.get(d) or {}).get("stage") not in ("validated", "failed") for d in ds)  # none settled
    state.set_stage(ds[1], "failed", s=settings(), stats={"error": "settled meanwhile (test)"})
    run = inst.get_run_by_id(res.run_id)
    [failure] = [e.dagster_event for e in inst.all_logs(res.run_id) if e.dagster_event
                 and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
    sensor = defs.resolve_sensor_def(f"deliveries_alone__{c.slug}")
    ctx = dg.build_run_status_sensor_context(sensor.name, failure, inst, run, repository_def=defs.get_repository_def())
    requests = list(sensor(ctx.for_run_failure()) or [])
    assert [(r.partition_key, r.run_key) for r in requests] == [(ds[0], f"alone:{ds[0]}"), (ds[2], f"alone:{ds[2]}")]


def test_a_run_reads_its_partition_keys_once_not_twice_a_delivery(lab: Path, tmp_path: Path, contracts,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster read every partition key of the contract 33 times in a run of 12 deliveries (each
    ``add_asset_metadata(partition_key=)`` resolves the run's range): with a month's 40,000 live
    partitions, 344 instead of 45 core-ms a delivery. ``partitions_read_once``: once a run."""
    import dagster as dg

    from assets.common import partitions_read_once
    from pipelines import runner

    monkeypatch.setenv("DATALAB_RUN_BATCH", "8")
    ids = _push(contracts, tmp_path, SPINDLE, 8)
    reads: list[str] = []
    real = dg.DagsterInstance.get_dynamic_partitions

    def counted(self: dg.DagsterInstance, partitions_def_name: str) -> list[str]:
        reads.append(partitions_def_name)
        return list(real(self, partitions_def_name))

    monkeypatch.setattr(dg.DagsterInstance, "get_dynamic_partitions", counted)
    out = runner.run_pending()
    assert sorted(r.delivery_id for r in out) == sorted(ids) and all(r.validation_ok for r in out)
    assert len(runner.instance().get_runs()) == 1
    # the runner's one (which deliveries have partitions, and their order) and the run's one;
    # none for the contracts with nothing pending
    assert reads == [f"{contracts[SPINDLE].slug}__deliveries"] * 2, reads

    # A run launched without the runner (as the daemon launches the sensor's): the asset steps
    # read once each, however many deliveries the run holds.
    from pipelines.definitions import ingest_job_name

    c = contracts[SPINDLE]
    for n, first in ((2, 20), (8, 30)):
        batch = _push(contracts, tmp_path, SPINDLE, n, first_seed=first)
        inst = runner.instance()
        inst.add_dynamic_partitions(f"{c.slug}__deliveries", batch)
        reads.clear()
        result = runner._defs().resolve_job_def(ingest_job_name(c)).execute_in_process(
            instance=inst, raise_on_error=False, tags={runner.RANGE_START: batch[0], runner.RANGE_END: batch[-1]})
        assert result.success and all(state.get(d)["stage"] == "validated" for d in batch)
        if n == 2:
            two = len(reads)
    assert len(reads) == two <= 10, reads  # not two more for each delivery (8 deliveries: 25 before)

    # Inside the block, a partition added or deleted is seen at the next read.
    inst = runner.instance()
    name = f"{contracts[SPINDLE].slug}__deliveries"
    with partitions_read_once(inst):
        before = list(inst.get_dynamic_partitions(name))
        assert list(inst.get_dynamic_partitions(name)) == before
        inst.add_dynamic_partitions(name, ["d-29990101000000-later"])
        assert list(inst.get_dynamic_partitions(name)) == [*before, "d-29990101000000-later"]
        inst.delete_dynamic_partition(name, "d-29990101000000-later")
        assert list(inst.get_dynamic_partitions(name)) == before
        with partitions_read_once(inst):  # an asset step's block inside a run's: the run's cache serves
            assert list(inst.get_dynamic_partitions(name)) == before
        assert "get_dynamic_partitions" in vars(inst)  # the outer block's cache is still there
    assert "get_dynamic_partitions" not in vars(inst)  # the instance is itself again
