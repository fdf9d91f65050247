"""The suite evaluated on a delivery's curated parts while they are in memory (validate.PartSuite).

Its report must be the file's: the same verdicts, counts and rows as the
suite on the whole curated file, for passing and failing deliveries, a
sensor the delivery lacks, and a firm's pseudonymised rows; anything the
fast path cannot take leaves the file to be validated, as before.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from datalab.config import settings
from datalab.contracts.contract import Contract
from datalab.intake import landing
from datalab.quality import validate
from datalab.store import state
from datalab.timeseries import curate, sample
from tests.conftest import PRESS, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
COMPARED = ("index", "type", "column", "sensor", "success", "unexpected_count", "element_count", "missing_count",
            "observed_value", "kwargs")


def _push(c: Contract, tmp: Path, defects: sample.Defects | None, seed: int, drop_sensor: str | None = None,
          start: dt.datetime = START) -> str:
    gen = sample.generate(c, 16_000, seed=seed, start=start, **({"defects": defects} if defects else {}))
    path = sample.write(gen, tmp / f"{c.slug}-{seed}.csv")
    if drop_sensor is not None:
        df = pl.read_csv(path, infer_schema=False)
        sensor_col = next(col for col in df.columns if col in ("sensor", "signal", "channel", "measurement"))
        df.filter(pl.col(sensor_col) != drop_sensor).write_csv(path)
    rec = landing.push(c, [path])
    assert rec.accepted, rec.reasons
    return rec.delivery_id


def _in_parts_and_from_the_file(c: Contract, d: str, monkeypatch: pytest.MonkeyPatch,
                                suites_dir: Path | None = None) -> tuple[validate.ValidationReport | None, validate.ValidationReport, curate.CurationStats]:
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "4000")  # 16,000 readings: curated in parts
    parts = validate.PartSuite.start(c, suites_dir)
    assert parts is not None
    st = curate.curate_delivery(c, d, on_part=parts.add)
    assert st.series_buckets > 1 and parts.runs > 1
    ours = validate.validate(c, curate.curated_path(c, d, settings()), run_name=d, build_docs=False, suites_dir=suites_dir,
                             curation_stats=st.to_dict(), parts=parts)  # the parts' report, not the file's
    theirs = validate.validate(c, curate.curated_path(c, d, settings()), run_name=f"{d}-file", build_docs=False,
                               suites_dir=suites_dir, curation_stats=st.to_dict())
    return ours, theirs, st


def _same(ours: validate.ValidationReport | None, theirs: validate.ValidationReport) -> None:
    assert ours is not None
    assert ours.engine == "polars" and "curated parts" in ours.notes[0]
    assert (ours.success, ours.rows, ours.evaluated, ours.failed) == (theirs.success, theirs.rows, theirs.evaluated, theirs.failed)
    for a, b in zip(theirs.results, ours.results, strict=True):
        assert {k: getattr(a, k) for k in COMPARED} == {k: getattr(b, k) for k in COMPARED}, a.message
        assert b.unexpected_percent == pytest.approx(a.unexpected_percent)
        assert bool(a.sample_values) == bool(b.sample_values), a.message


@pytest.mark.parametrize(("cid", "defects"), [
    (SPINDLE, None),  # passes
    (SPINDLE, sample.Defects(spikes=0.05, missing=0.03, key_duplicates=0.02)),  # fails several rules
    (PRESS, sample.Defects(key_duplicates=0.03)),  # compound uniqueness and the pseudonym regex
])
def test_the_parts_report_is_the_files(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch,
                                       cid, defects) -> None:
    c = contracts[cid]
    d = _push(c, tmp_path, defects, seed=5)
    ours, theirs, _ = _in_parts_and_from_the_file(c, d, monkeypatch)
    _same(ours, theirs)
    if defects is not None and cid == SPINDLE:
        assert not ours.success and ours.failed > 0
    saved = json.loads((settings().validation / f"{d}.json").read_text())
    assert saved["success"] == ours.success and len(saved["results"]) == len(ours.results)


def test_a_sensor_the_delivery_lacks_gets_the_files_verdict(lab: Path, tmp_path: Path, contracts,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Expectations conditioned on a sensor no part holds run as written on the first run, as on the first file chunk."""
    c = contracts[SPINDLE]
    gone = c.measurements[0].name
    d = _push(c, tmp_path, None, seed=6, drop_sensor=gone)
    ours, theirs, _ = _in_parts_and_from_the_file(c, d, monkeypatch)
    assert ours is not None and [r.sensor for r in ours.results].count(gone) >= 1
    _same(ours, theirs)


def test_parts_in_any_cut_give_the_whole_tables_counts(lab: Path, tmp_path: Path, contracts) -> None:
    """Parts cut anywhere (a sensor's rows across two parts, a part of one sensor first) give the whole table's counts;
    the first run's as-written results for the other sensors are dropped, as every sensor is held by some part."""
    c = contracts[SPINDLE]
    d = _push(c, tmp_path, sample.Defects(spikes=0.05, missing=0.03, key_duplicates=0.02), seed=7)
    curate.curate_delivery(c, d)  # one part (the default bucket): read back and cut here
    df = pl.read_parquet(curate.curated_path(c, d, settings()))
    # Cut where a series ends, as curation's parts are (whole series, or a long one cut by time).
    ends = df.select(pl.struct("sensor", "entity").rle().struct.field("len")).to_series().cum_sum().to_list()
    a, b = ends[0], ends[len(ends) // 2 + 1]
    cuts = [df.slice(0, a), df.slice(a, b - a), df.slice(b)]
    assert cuts[0].get_column("sensor").n_unique() == 1 and cuts[1].get_column("sensor").n_unique() > 1
    parts = validate.PartSuite.start(c)
    assert parts is not None
    for part in cuts:
        parts.add(part)
    assert parts.runs >= len(c.measurements) + 1 and parts.rows == df.height
    whole = validate.validate(c, df, run_name="parts-whole", build_docs=False, curation_stats={})
    ours = parts.report("parts-cut", {}, df.height)
    assert ours is not None and not ours.success
    for a, b in zip(whole.results, ours.results, strict=True):
        assert {k: getattr(a, k) for k in COMPARED} == {k: getattr(b, k) for k in COMPARED}, a.message


def test_what_the_fast_path_cannot_take_is_left_to_the_file(lab: Path, tmp_path: Path, contracts,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    c = contracts[SPINDLE]
    suites = tmp_path / "suites"
    suites.mkdir()
    # an expectation only GX evaluates: no part suite at all
    (suites / f"{c.slug}.json").write_text(json.dumps([{"type": "expect_column_values_to_be_unique", "kwargs": {"column": "entity"}}]))
    assert validate.PartSuite.start(c, suites) is None
    # a column the table lacks: the parts cannot be evaluated, the file is (and reports it)
    (suites / f"{c.slug}.json").write_text(json.dumps([{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "ghost"}}]))
    d = _push(c, tmp_path, None, seed=8)
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "4000")
    parts = validate.PartSuite.start(c, suites)
    assert parts is not None
    st = curate.curate_delivery(c, d, on_part=parts.add)
    assert parts.broken is not None and "ghost" in parts.broken
    assert parts.report(d, st.to_dict(), st.rows_out) is None
    rep = validate.validate(c, curate.curated_path(c, d, settings()), run_name=d, build_docs=False, suites_dir=suites,
                            curation_stats=st.to_dict(), parts=parts)  # the file, as before
    assert "curated parts" not in rep.notes[0] and not rep.success
    # the gx engine, forced: the file, as before
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")
    assert validate.PartSuite.start(c) is None


def test_a_part_suite_that_missed_rows_gives_no_report(lab: Path, contracts) -> None:
    c = contracts[SPINDLE]
    parts = validate.PartSuite.start(c)
    assert parts is not None
    assert parts.report("nothing-seen", {}, 10) is None


@pytest.mark.slow
def test_the_curated_asset_checks_a_delivery_in_parts_from_memory(lab: Path, tmp_path: Path, contracts,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Dagster: the blocking suite check of a delivery curated in parts takes the parts' report (not the file)."""
    from pipelines import runner

    c = contracts[SPINDLE]
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "4000")
    good = _push(c, tmp_path, None, seed=9)
    bad = _push(c, tmp_path, sample.Defects(spikes=0.05, missing=0.03, key_duplicates=0.02), seed=10,
                start=START + dt.timedelta(days=30))  # no reading repeats the first delivery's
    runs = {r.delivery_id: r for r in runner.run_pending(SPINDLE)}
    assert runs[good].validation_ok is True and runs[bad].validation_ok is False
    for d in (good, bad):
        saved = json.loads((settings().validation / f"{d}.json").read_text())
        assert state.get(d)["stats"]["curated"]["series_buckets"] > 1
        assert "curated parts" in saved["notes"][0], saved["notes"]
        assert saved["rows"] == state.get(d)["stats"]["curated"]["rows_out"]


def test_neighbours_are_compared_only_where_equal_keys_are_neighbours(lab: Path, tmp_path: Path, contracts) -> None:
    """The key check by neighbours (a curated run) gives the window's counts and samples; shuffled, or with a
    missing key value, the run is not taken for grouped and the window decides."""
    from datalab.quality import fast

    c = contracts[SPINDLE]
    d = _push(c, tmp_path, sample.Defects(key_duplicates=0.03, spikes=0.01), seed=11)
    curate.curate_delivery(c, d)
    df = pl.read_parquet(curate.curated_path(c, d, settings()))
    run = df.filter(pl.col("sensor") == df.get_column("sensor")[0])
    specs = [s for s in validate._suite_for(c) if s.type == "expect_compound_columns_to_be_unique"]
    assert specs and set(specs[0].kwargs["column_list"]) == validate.SERIES_KEY
    assert validate._grouped_by_series(run)
    by_window, _ = fast.evaluate(specs, run)
    by_neighbours, _ = fast.evaluate(specs, run, grouped_by=validate.SERIES_KEY)
    assert by_window[0].unexpected_count > 0
    assert by_window == by_neighbours
    shuffled = run.sample(fraction=1.0, shuffle=True, seed=1)
    assert not validate._grouped_by_series(shuffled)
    holed = run.with_columns(time=pl.when(pl.int_range(pl.len()) == 5).then(None).otherwise(pl.col("time")))
    assert not validate._grouped_by_series(holed)
    # the hint is not taken where a key column holds a null, even if a caller gives it
    assert fast.evaluate(specs, holed, grouped_by=validate.SERIES_KEY)[0] == fast.evaluate(specs, holed)[0]


def test_a_part_not_in_series_order_is_checked_by_the_window(lab: Path, tmp_path: Path, contracts) -> None:
    """A part whose sensor runs are shuffled inside (repeated keys no longer neighbours) gives the whole table's
    counts: the part suite checks the order before it lets neighbours decide."""
    c = contracts[SPINDLE]
    d = _push(c, tmp_path, sample.Defects(key_duplicates=0.03), seed=12)
    curate.curate_delivery(c, d)
    df = pl.read_parquet(curate.curated_path(c, d, settings()))
    shuffled = pl.concat([run.sample(fraction=1.0, shuffle=True, seed=3)
                          for run in df.partition_by("sensor", maintain_order=True)])
    parts = validate.PartSuite.start(c)
    assert parts is not None
    parts.add(shuffled)
    whole = validate.validate(c, shuffled, run_name="shuffled-whole", build_docs=False, curation_stats={})
    ours = parts.report("shuffled-parts", {}, shuffled.height)
    assert ours is not None
    keys = [(a, b) for a, b in zip(whole.results, ours.results, strict=True) if a.type == "expect_compound_columns_to_be_unique"]
    assert keys and keys[0][0].unexpected_count > 0
    for a, b in zip(whole.results, ours.results, strict=True):
        assert {k: getattr(a, k) for k in COMPARED} == {k: getattr(b, k) for k in COMPARED}, a.message
