"""The curation plan gives the same table on every engine.

CPU in-memory, CPU streaming and bucketed execution run here on every
machine; the GPU half (cudf-polars) runs where a GPU is usable and skips
with the reason otherwise. Inputs: the generator's defect-laden deliveries
and the real sensor files. Floats compare within ``REL_TOL`` (GPU reductions
may sum in another order); everything else exactly.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from datalab.engine import Engine, gpu_status
from datalab.intake.formats import sniff
from datalab.policy import pseudonym
from datalab.timeseries import curate, sample
from datalab.timeseries.readers import read_all
from tests.conftest import CMAPSS, HYDRAULIC, PRESS, SPINDLE

REL_TOL = 1e-9
START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
KEYS = ["entity", "sensor", "time", "raw_value", "raw_unit"]


def _raw(contract, files: list[Path]) -> pl.DataFrame:
    frames = []
    for f in files:
        df, reader = read_all(contract, f, f.name, sniff(f, f.name, contract.layout.delimiter))
        assert not reader.problems, reader.problems.reasons()
        frames.append(df)
    return pl.concat(frames).with_columns(delivery_id=pl.lit("d-parity"))


def _plan(contract, raw: pl.DataFrame, lab_home: Path) -> pl.LazyFrame:
    pseudonyms = {
        a.name: pseudonym.mapping(raw.get_column(a.name).unique(), f"{contract.tenant}:{a.name}")
        for a in contract.attributes if a.personal
    }
    return curate.build_plan(contract, raw.lazy(), None, pseudonyms)


def _same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert_frame_equal(a.sort(KEYS), b.sort(KEYS), check_exact=False, rel_tol=REL_TOL, abs_tol=0.0)


def _cases(contracts, realdata_dir: Path | None, tmp: Path) -> list[tuple[str, object, pl.DataFrame]]:
    out = []
    for cid, rows in ((SPINDLE, 20_000), (PRESS, 12_000)):
        c = contracts[cid]
        path = sample.write(sample.generate(c, rows, seed=21, start=START), tmp / f"{c.slug}.csv")
        out.append((c.slug, c, _raw(c, [path])))
    if realdata_dir is not None:
        out.append(("cmapss", contracts[CMAPSS], _raw(contracts[CMAPSS], [realdata_dir / "cmapss/train_FD001.txt"])))
        out.append(("hydraulic", contracts[HYDRAULIC], _raw(contracts[HYDRAULIC], [realdata_dir / "hydraulic/TS1.txt"])))
    return out


@pytest.fixture
def cases(lab: Path, tmp_path: Path, contracts, request: pytest.FixtureRequest):
    from tests.conftest import REALDATA

    return _cases(contracts, REALDATA if REALDATA.is_dir() else None, tmp_path)


def test_cpu_in_memory_streaming_and_buckets_agree(lab: Path, cases) -> None:
    assert len(cases) >= 2
    for name, c, raw in cases:
        plan = _plan(c, raw, lab)
        eager = plan.collect()
        streamed = plan.collect(engine="streaming")
        _same(eager, streamed)
        sizes = curate.series_sizes(raw.lazy())
        keys = curate.series_buckets(sizes, max(1, int(sizes["n"].sum()) // 3))
        assert len(keys) > 1 or sizes.height == 1, name
        parts = [_plan(c, curate.bucket_rows(raw.lazy(), k).collect(), lab).collect() for k in keys]
        _same(eager, pl.concat(parts))
        assert len(eager) > 0, name


def test_engine_records_cpu_run(lab: Path, cases) -> None:
    _name, c, raw = cases[0]
    df, run = Engine("cpu").collect(_plan(c, raw, lab))
    assert run.engine == "cpu" and run.fallback is None
    assert run.peak_rss_mb > 0 and run.seconds > 0
    assert len(df) == len(_plan(c, raw, lab).collect())


def test_auto_without_gpu_says_why(lab: Path) -> None:
    ok, why = gpu_status()
    if ok:
        pytest.skip("a GPU is usable here; this checks the no-GPU path")
    df, run = Engine("gpu").collect(pl.LazyFrame({"a": [1, 2]}).select(pl.col("a") * 2))
    assert run.engine == "cpu" and run.fallback and why in run.fallback
    assert df["a"].to_list() == [2, 4]


def test_gpu_matches_cpu(lab: Path, cases) -> None:
    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"GPU half of the parity suite: {why}")
    for name, c, raw in cases:
        plan = _plan(c, raw, lab)
        cpu = plan.collect()
        gpu, run = Engine("gpu").collect(plan)
        assert run.engine == "gpu", f"{name}: fell back to the CPU: {run.fallback}"
        _same(cpu, gpu)
        # The plan curate_delivery runs on a GPU: the one-key order, its
        # series rank by a join (joins_only: cudf-polars has no replace_strict).
        order = curate.series_order(curate.series_table(raw.lazy()))
        one_key = curate.build_plan(c, raw.lazy(), None, None, order, joins_only=True)
        gpu, run = Engine("gpu").collect(one_key)
        assert run.engine == "gpu", f"{name}, one-key plan: fell back to the CPU: {run.fallback}"
        _same(curate.build_plan(c, raw.lazy(), None, None, order).collect(), gpu)


def test_one_key_sort_gives_the_multi_column_order(lab: Path, cases) -> None:
    """The Int64 sort key (SeriesOrder) orders rows exactly as the sort by sensor, entity, time does."""
    for name, c, raw in cases:
        order = curate.series_order(curate.series_table(raw.lazy()))
        assert order is not None, name
        fast = curate.build_plan(c, raw.lazy(), None, None, order).collect()
        slow = curate.build_plan(c, raw.lazy(), None, None, None).collect()
        assert_frame_equal(fast, slow, check_exact=True)  # same rows in the same order, not just the same set


def test_series_rank_by_lookups_equals_the_join(lab: Path, cases) -> None:
    """SeriesOrder.rank (lookups, CPU) gives every row the rank the join with the series table gives (GPU)."""
    for name, c, raw in cases:
        i = pl.int_range(pl.len())
        for frame in (raw, raw.with_columns(  # and with null sensors and entities mixed in
            sensor=pl.when(i % 7 == 0).then(None).otherwise(pl.col("sensor")),
            entity=pl.when(i % 5 == 0).then(None).otherwise(pl.col("entity")),
        ), raw.with_columns(  # a sensor the contract does not know; units it does not know, or none
            sensor=pl.when(i % 11 == 0).then(pl.lit("mystery_sensor")).otherwise(pl.col("sensor")),
            raw_unit=pl.when(i % 13 == 0).then(pl.lit("furlong")).when(i % 17 == 0).then(None).otherwise(pl.col("raw_unit")),
        )):
            order = curate.series_order(curate.series_table(frame.lazy()))
            assert order is not None, name
            by_lookup = order.attach(frame.lazy()).collect()
            by_join = order.attach(frame.lazy(), joins_only=True).collect()
            assert by_lookup["_s"].null_count() == 0
            assert_frame_equal(by_lookup, by_join, check_exact=True)
            plan = curate.build_plan(c, frame.lazy(), None, None, order).collect()
            joins = curate.build_plan(c, frame.lazy(), None, None, order, joins_only=True).collect()
            assert_frame_equal(plan, joins, check_exact=True)
            if "mystery_sensor" in frame.get_column("sensor"):  # the unknowns were there, and flagged
                assert plan.filter((pl.col("raw_unit") == "furlong") & ~pl.col("flag_missing")).get_column("flag_unit_unknown").all()
                assert plan.filter(pl.col("sensor") == "mystery_sensor").get_column("unit").is_null().all()


def test_one_key_sort_places_nulls_last_and_keeps_delivery_order(contracts) -> None:
    """Null entity and null time sort last (as nulls_last does); key duplicates keep delivery order."""
    from datalab.timeseries.readers import long_schema

    c = contracts[SPINDLE]
    t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    rows = [
        ("d", "M2", t, "spindle_temp", 3.0, "Cel"),
        ("d", None, t, "spindle_temp", 1.0, "Cel"),
        ("d", "M1", None, "spindle_temp", 2.0, "Cel"),
        ("d", "M1", t, "spindle_temp", 9.0, "Cel"),  # key duplicate, first in the delivery
        ("d", "M1", t, "spindle_temp", 4.0, "Cel"),
        ("d", "M1", t - dt.timedelta(seconds=1), "spindle_temp", 5.0, "Cel"),
        ("d", "M1", t, "oil_pressure", 6.0, "bar"),
    ]
    raw = pl.DataFrame(rows, schema={"delivery_id": pl.String, **long_schema(c)}, orient="row")
    order = curate.series_order(curate.series_table(raw.lazy()))
    assert order is not None and order.nulls
    fast = curate.build_plan(c, raw.lazy(), None, None, order).collect()
    slow = curate.build_plan(c, raw.lazy(), None, None, None).collect()
    assert_frame_equal(fast, slow, check_exact=True)
    assert fast["raw_value"].to_list() == [6.0, 5.0, 9.0, 4.0, 2.0, 3.0, 1.0]


def test_exact_duplicates_leave_by_sort_as_by_hash(contracts) -> None:
    """The sort-based duplicate drop equals unique(): first copy stays, apart copies too, nulls and NaN alike."""
    from datalab.timeseries.readers import long_schema

    c = contracts[SPINDLE]
    t = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    s = dt.timedelta(seconds=1)
    rows = [
        ("d", "M1", t, "spindle_temp", 1.0, "Cel"),
        ("d", "M1", t, "spindle_temp", 2.0, "Cel"),  # key duplicate, kept
        ("d", "M1", t + s, "spindle_temp", 3.0, "Cel"),
        ("d", "M1", t, "spindle_temp", 1.0, "Cel"),  # exact duplicate of the first, two rows apart
        ("d", "M1", t, "spindle_temp", 1.0, "[degF]"),  # same value, other unit: kept
        ("d", "M1", t + 2 * s, "spindle_temp", None, "Cel"),
        ("d", "M1", t + 2 * s, "spindle_temp", None, "Cel"),  # null value twice: one stays
        ("d", "M1", t + 3 * s, "spindle_temp", float("nan"), "Cel"),
        ("d", "M1", t + 3 * s, "spindle_temp", float("nan"), "Cel"),  # NaN twice: one stays
        ("d", "M1", None, "spindle_temp", 4.0, "Cel"),
        ("d", "M1", None, "spindle_temp", 4.0, "Cel"),  # null time twice
        ("d", "M1", t + s, "spindle_temp", 3.0, "Cel"),  # exact duplicate, last in the delivery
    ]
    raw = pl.DataFrame(rows, schema={"delivery_id": pl.String, **long_schema(c)}, orient="row")
    order = curate.series_order(curate.series_table(raw.lazy()))
    assert order is not None
    fast = curate.build_plan(c, raw.lazy(), None, None, order).collect()
    slow = curate.build_plan(c, raw.lazy(), None, None, None).collect()
    assert_frame_equal(fast, slow, check_exact=True)
    assert fast.height == 7
    assert fast.filter(pl.col("time") == t)["raw_value"].to_list() == [1.0, 2.0, 1.0]
    assert fast["flag_key_duplicate"].to_list() == [True, True, True, False, False, False, False]


def test_one_key_sort_falls_back_when_the_key_would_overflow() -> None:
    table = pl.DataFrame({"sensor": ["a", "b"], "entity": ["x", "y"], "n": [1, 1], "t_min": [0, -(2**61)], "t_max": [2**61, 0]})
    assert curate.series_order(table) is None
    assert curate.series_order(table.with_columns(t_min=pl.lit(None, pl.Int64), t_max=pl.lit(None, pl.Int64))) is None


def test_memory_watches_nest_and_share_one_sampler() -> None:
    """Each open watch sees the peak of what happens inside it; one thread samples for all, and idles after."""
    import threading
    import time

    import numpy as np

    from datalab.engine import MemoryWatch, rss_mb

    def samplers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "datalab-memwatch"]

    with MemoryWatch() as outer, MemoryWatch(interval=0.005) as inner:
        block = np.ones(40_000_000)  # 320 MB, touched
        time.sleep(0.1)  # the sampler's, while the block is held
        held = rss_mb()
        time.sleep(0.05)
        del block
    # (the block's pages may have come from memory the process already held, so only what was
    # resident while it lived is certain)
    assert inner.peak_mb >= held - 1 and outer.peak_mb >= inner.peak_mb
    assert len(samplers()) == 1 and not MemoryWatch._open
    for _ in range(50):
        with MemoryWatch():
            pass
    assert len(samplers()) == 1  # not a thread per watch
