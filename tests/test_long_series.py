"""Series longer than a bucket: time chunks, exact median by selection, same table as the whole plan."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from datalab.config import settings
from datalab.engine import Engine
from datalab.intake import landing
from datalab.policy import pseudonym
from datalab.timeseries import curate, long_series, sample
from datalab.timeseries.readers import long_schema
from tests.conftest import PRESS, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize("seed", range(12))
def test_median_by_selection_equals_polars(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3_000))
    kind = seed % 6
    if kind == 0:
        v = rng.normal(50, 10, n)
    elif kind == 1:
        v = rng.integers(0, 5, n).astype(float)  # many ties
    elif kind == 2:
        v = rng.normal(0, 1, n) * 10.0 ** rng.integers(-300, 300, n)  # a huge range
    elif kind == 3:
        base = 1.0
        v = np.array([base, np.nextafter(base, 2.0)])[rng.integers(0, 2, n)]  # two neighbouring floats
    elif kind == 4:
        v = rng.normal(0, 1, n)
        v[rng.integers(0, n, max(1, n // 10))] = np.nan
        v[rng.integers(0, n, max(1, n // 20))] = np.inf
        v[rng.integers(0, n, max(1, n // 20))] = -np.inf
    else:
        v = np.full(n, 7.25)
    s = pl.Series("v", v, dtype=pl.Float64)
    for limit in (50, 10_000):
        got = long_series.median(pl.LazyFrame({"v": s}), limit)
        want = s.median()
        assert (math.isnan(got) and math.isnan(want)) or got == want, (seed, limit, got, want)


def test_median_of_nothing_is_none():
    assert long_series.median(pl.LazyFrame({"v": pl.Series([], dtype=pl.Float64)}), 10) is None


def _raw(c, frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(delivery_id=pl.lit("d-long")).select("delivery_id", *long_schema(c))


def _generated(c, rows: int, seed: int = 3) -> pl.DataFrame:
    import tempfile

    from datalab.intake.formats import sniff
    from datalab.timeseries.readers import read_all

    with tempfile.TemporaryDirectory() as tmp:
        path = sample.write(sample.generate(c, rows, seed=seed, start=START), Path(tmp) / "d.csv")
        df, _ = read_all(c, path, path.name, sniff(path, path.name, c.layout.delimiter))
    return _raw(c, df)


def _whole_and_chunked(c, raw: pl.DataFrame, cap: int, tmp: Path, pseudonyms=None) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    lf = raw.lazy()
    table = curate.series_table(lf)
    order = curate.series_order(table)
    assert order is not None
    whole = curate.build_plan(c, lf, None, pseudonyms, order).collect()
    plans: list[pl.LazyFrame] = []
    for i, r in enumerate(table.sort("sensor", "entity", nulls_last=True).iter_rows(named=True)):
        plans += curate.long_series_plans(c, lf, r, cap, None, pseudonyms, order, False, Engine("cpu"), tmp / str(i))
    chunked = pl.concat([p.collect() for p in plans])
    return whole, chunked, len(plans)


def test_time_chunks_cover_every_row_once_and_stay_under_the_cap(contracts):
    c = contracts[SPINDLE]
    raw = _generated(c, 12_000)
    one = raw.filter((pl.col("sensor") == "spindle_temp") & (pl.col("entity") == raw["entity"][0]))
    t = one.select(curate.TIME_INT.alias("t"))["t"]
    chunks = long_series.time_chunks(one.lazy(), curate.TIME_INT, t.min(), t.max(), 300)
    assert len(chunks) > 3
    sizes = [one.filter(ch.predicate(curate.TIME_INT)).height for ch in chunks]
    assert sum(sizes) == one.height and max(sizes) <= 300
    for ch in chunks[1:]:
        assert ch.before == one.filter(ch.lo > curate.TIME_INT).select(curate.TIME_INT.max()).item()


def test_generated_series_cut_by_time_give_the_whole_plans_table(contracts, tmp_path):
    c = contracts[SPINDLE]  # exact and key duplicates, gaps, spikes, unit changes, late rows
    raw = _generated(c, 20_000)
    whole, chunked, n = _whole_and_chunked(c, raw, 400, tmp_path)
    assert n > 2 * raw.select(pl.struct("sensor", "entity").n_unique()).item()
    assert whole["flag_gap_before"].sum() > 0 and whole["flag_key_duplicate"].sum() > 0
    assert_frame_equal(chunked, whole, check_exact=True)  # same rows, same order


def test_pseudonyms_and_attributes_in_chunks(contracts, tmp_path, lab):
    c = contracts[PRESS]
    raw = _generated(c, 9_000, seed=11)
    pseudonyms = {a.name: pseudonym.mapping(raw.get_column(a.name).unique(), f"{c.tenant}:{a.name}")
                  for a in c.attributes if a.personal}
    whole, chunked, _ = _whole_and_chunked(c, raw, 250, tmp_path, pseudonyms)
    assert_frame_equal(chunked, whole, check_exact=True)


def test_edges_null_times_nan_and_duplicates_across_cuts(contracts, tmp_path):
    """Duplicates at the times where chunks are cut, null times, NaN and a null entity."""
    c = contracts[SPINDLE]
    rows = []
    for i in range(3_000):
        t = START + dt.timedelta(seconds=i)
        rows.append(("M1", t, "spindle_temp", 20.0 + (i % 17), "Cel"))
        if i % 97 == 0:
            rows.append(("M1", t, "spindle_temp", 20.0 + (i % 17), "Cel"))  # exact duplicate
            rows.append(("M1", t, "spindle_temp", 99.0, "Cel"))  # key duplicate
        if i % 251 == 0:
            rows.append(("M1", t, "spindle_temp", float("nan"), "Cel"))
        if i % 500 == 0:
            rows.append(("M1", None, "spindle_temp", 21.0, "Cel"))
            rows.append((None, t, "spindle_temp", 22.0, "Cel"))
    rows.append(("M1", START + dt.timedelta(hours=5), "spindle_temp", 140.0, "Cel"))  # a gap and a spike
    raw = _raw(c, pl.DataFrame(rows, schema=["entity", "time", "sensor", "raw_value", "raw_unit"], orient="row"))
    whole, chunked, n = _whole_and_chunked(c, raw, 200, tmp_path)
    assert n > 10
    assert whole["flag_outlier"].sum() > 0 and whole["flag_gap_before"].sum() > 0
    assert_frame_equal(chunked, whole, check_exact=True)


@pytest.mark.parametrize("split_from", [None, 1], ids=["filtered", "split"])
def test_a_delivery_with_series_longer_than_a_bucket(lab, tmp_path, contracts, monkeypatch, split_from):
    """Through curate_delivery: long series are cut, the table equals the one-go table (each bucket and
    long series filtered from the raw rows, or split into files of their own first)."""
    from datalab.timeseries import split

    if split_from is not None:
        monkeypatch.setattr(split, "SPLIT_FROM_PARTS", split_from)
    c = contracts[SPINDLE]
    src = sample.write(sample.generate(c, 12_000, seed=9, start=START), tmp_path / "one.csv")
    rec = landing.push(c, [src])
    assert rec.accepted, rec.reasons
    one = curate.curate_delivery(c, rec.delivery_id)
    first = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    assert one.long_series == {"series": 0, "chunks": 0}
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "700")
    many = curate.curate_delivery(c, rec.delivery_id)
    second = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    assert many.long_series["series"] > 0 and many.long_series["chunks"] > many.long_series["series"]
    assert not list(curate.curated_path(c, rec.delivery_id, settings()).parent.glob(".*.long"))  # scratch removed
    keys = ["sensor", "entity", "time", "raw_value", "raw_unit"]
    assert_frame_equal(first.sort(keys, maintain_order=True), second.sort(keys, maintain_order=True), check_exact=True)
    assert one.flags == many.flags


def test_a_bucket_leaves_out_a_long_series_that_shares_its_hash(contracts):
    """Buckets pick series by hash; a long series in a bucket's hash list (a collision) stays out of it."""
    c = contracts[SPINDLE]
    raw = _generated(c, 3_000)
    table = curate.series_table(raw.lazy())
    long = table.head(1)
    hashes = table.select(curate.SERIES_HASH).to_series().to_list()
    got = curate._short_rows(raw.lazy(), hashes, long, set(hashes[:1])).collect()
    assert got.height == raw.height - long["n"][0]
    assert got.filter((pl.col("sensor") == long["sensor"][0]) & (pl.col("entity") == long["entity"][0])).is_empty()
    assert curate._short_rows(raw.lazy(), hashes, long, set()).collect().height == raw.height
