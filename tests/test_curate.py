"""Curation counts match what the generator injected; the plan is one LazyFrame."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from datalab.intake import landing
from datalab.timeseries import curate, ingest, sample
from tests.conftest import CMAPSS, HYDRAULIC, PRESS, PUMPS, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def _land_and_curate(c, gen: sample.Generated, path: Path,
                     correction: bool = False) -> tuple[curate.CurationStats, pl.DataFrame]:
    sample.write(gen, path)
    rec = landing.push(c, [path], correction=correction)
    assert rec.accepted, rec.reasons
    ingest.ingest_raw(c, rec.delivery_id)
    stats = curate.curate_delivery(c, rec.delivery_id)
    return stats, pl.read_parquet(curate.curated_path(c, rec.delivery_id, __import__("datalab.config").config.settings()))


def test_every_defect_counted(lab: Path, tmp_path: Path, contracts) -> None:
    c = contracts[SPINDLE]
    gen = sample.generate(c, 24_000, seed=7, start=START)
    t = gen.truth
    assert min(t["exact_duplicates"], t["key_duplicates"], t["wrong_unit"], t["missing"], t["spikes"], t["gaps"], t["tz_shifted"]) > 0
    st, df = _land_and_curate(c, gen, tmp_path / "d1.csv")
    assert st.rows_in == t["rows"]
    assert st.exact_duplicates_removed == t["exact_duplicates"]
    assert st.rows_out == t["rows"] - t["exact_duplicates"]
    assert st.values_converted == t["wrong_unit"]
    assert st.flags["flag_missing"] == t["missing"]
    assert st.flags["flag_out_of_range"] == t["spikes"]
    assert st.flags["flag_key_duplicate"] == 2 * t["key_duplicates"]
    assert st.flags["flag_gap_before"] == t["gaps"]
    assert st.flags["flag_unit_unknown"] == 0 and st.flags["flag_late"] == 0
    # all values in canonical units, times in UTC, nothing but exact duplicates deleted
    assert set(df["unit"].unique()) == {"Cel", "bar", "mm/s", "/min"}
    assert df.schema["time"] == pl.Datetime("us", "UTC")
    assert df["time"].min() >= START
    converted = df.filter(pl.col("raw_unit") != pl.col("unit"))
    assert len(converted) == t["wrong_unit"]
    temps = converted.filter(pl.col("sensor") == "spindle_temp")
    if len(temps):
        row = temps.row(0, named=True)
        assert row["value"] == pytest.approx((row["raw_value"] - 32) * 5 / 9)
    assert st.engine["engine"] == "cpu"


# The keys of the curation statistics the catalog stores (and the manifest copies), in order, as they were
# before the record was typed (CurationStats); "warnings" comes after max_duplicate_share when there are any;
# "card_facts" (the card's counts, datalab.store.row_facts) last, never copied into a manifest.
STORED_KEYS = ["rows_in", "rows_out", "exact_duplicates_removed", "repeats_excluded", "correction", "replaces",
               "duplicate_rows", "duplicate_share", "max_duplicate_share", "values_converted", *curate.FLAGS,
               "entities", "time_min", "time_max", "constant_sensors", "sensors", "pseudonymised_columns", "engine",
               "series_buckets", "long_series", "seconds", "bytes_out", "card_facts"]


def test_the_stored_statistics_keep_their_keys(lab: Path, tmp_path: Path, contracts) -> None:
    """The typed record is stored as the dict it replaced: the same keys, in the same order, flags at the top level."""
    import json

    from datalab.store import state

    c = contracts[SPINDLE]
    st, df = _land_and_curate(c, sample.generate(c, 6_000, seed=3, start=START), tmp_path / "d.csv")
    stored = state.get(df["delivery_id"][0])["stats"]["curated"]
    assert stored == json.loads(json.dumps(st.to_dict()))
    assert [k for k in stored if k != "warnings"] == STORED_KEYS
    assert all(stored[f] == n for f, n in st.flags.items()) and "flags" not in stored
    assert stored["long_series"] == st.long_series and stored["engine"]["engine"] == "cpu"
    assert ("warnings" in stored) == bool(st.warnings)


def test_timezone_shift_changes_nothing(lab: Path, tmp_path: Path, contracts) -> None:
    c = contracts[SPINDLE]
    clean = sample.generate(c, 6_000, seed=3, start=START, defects=sample.Defects.none())
    shifted = sample.generate(c, 6_000, seed=3, start=START, defects=sample.Defects(
        exact_duplicates=0, key_duplicates=0, wrong_unit=0, missing=0, spikes=0, gaps=0, shuffle=False, tz_shift=0.3))
    assert shifted.truth["tz_shifted"] > 1000
    _, a = _land_and_curate(c, clean, tmp_path / "a.csv")
    # The same readings again: a declared correction, or they would be excluded as repeats (issue 23).
    _, b = _land_and_curate(c, shifted, tmp_path / "b.csv", correction=True)
    cols = ["entity", "time", "sensor", "value"]
    assert a.select(cols).sort(cols).equals(b.select(cols).sort(cols))


def test_late_rows_flagged_against_earlier_delivery(lab: Path, tmp_path: Path, contracts) -> None:
    c = contracts[SPINDLE]
    rows = 1_200  # 3 machines x 4 sensors -> 100 s
    first = sample.generate(c, rows, seed=1, start=START, defects=sample.Defects.none())
    _land_and_curate(c, first, tmp_path / "first.csv")
    second = sample.generate(c, rows, seed=2, start=START + dt.timedelta(seconds=rows // 12),
                             defects=sample.Defects(exact_duplicates=0, key_duplicates=0, wrong_unit=0, missing=0,
                                                    spikes=0, gaps=0, shuffle=False, tz_shift=0, late=30))
    st, _ = _land_and_curate(c, second, tmp_path / "second.csv")
    # Issue 23: a late row whose key (entity, time, sensor) the first delivery
    # already holds is a repeat, excluded and counted, not flagged late.
    assert st.flags["flag_late"] + st.repeats_excluded == 30 and st.repeats_excluded > 0


def test_earlier_deliveries_found_by_their_time_ranges_as_by_their_statistics(lab: Path, tmp_path: Path,
                                                                              contracts) -> None:
    """curate.earlier_curated reads dl_curated_spans; in a catalog without the rows (deliveries curated before
    the table) they are filled in from the statistics, to the same rows and the same answers, for spans that
    meet none, some and all deliveries."""
    import sqlalchemy as sa

    from datalab.config import settings
    from datalab.store import catalog as cat
    from datalab.store import state

    c = contracts[SPINDLE]
    recs = []
    for day in (0, 1, 2):  # three days of 100 s each, no reading in common
        gen = sample.generate(c, 1_200, seed=day, start=START + dt.timedelta(days=day), defects=sample.Defects.none())
        recs.append(landing.push(c, [sample.write(gen, tmp_path / f"d{day}.csv")]).delivery_id)
    fix = sample.write(sample.generate(c, 120, seed=9, start=START, defects=sample.Defects.none()), tmp_path / "fix.csv")
    recs.append(landing.push(c, [fix], correction=True).delivery_id)
    for d in (recs[3], recs[0], recs[2]):  # the correction curated first; recs[1] not curated
        ingest.ingest_raw(c, d)
        curate.curate_delivery(c, d)
    s = settings()
    with cat.Catalog(s.catalog_url).begin() as conn:
        spans = {r.delivery_id: (r.time_lo, r.time_hi, r.replaces) for r in conn.execute(sa.select(cat.curated_spans))}
    assert set(spans) == {recs[0], recs[2], recs[3]} and spans[recs[3]][2] and not spans[recs[0]][2]
    day_us = 86_400 * 1_000_000
    t0 = curate._as_time_int(START.isoformat())
    cases = [(recs[1], (None, None)), (recs[1], (t0, t0 + 3 * day_us)), (recs[1], (t0 + day_us, t0 + day_us + 1)),
             (recs[0], (t0, t0 + 10**8)), (recs[1], (t0, t0 + 10**8)),
             (recs[3], (None, None)), ("d-none", (None, None))]
    by_spans = [[d for d, _ in curate.earlier_curated(c, me, s, span)] for me, span in cases]
    assert by_spans[0] == by_spans[1] == [recs[0], recs[2]]  # the later correction replaces rather than keeps
    assert by_spans[2] == [] and by_spans[3] == [] and by_spans[4] == [recs[0]]
    assert by_spans[5] == [recs[0], recs[2]] and by_spans[6] == []
    with cat.Catalog(s.catalog_url).begin() as conn:  # a catalog from before the table: rows filled in once
        conn.execute(cat.curated_spans.delete())
    curate._SPANNED.clear()
    assert [[d for d, _ in curate.earlier_curated(c, me, s, span)] for me, span in cases] == by_spans
    with cat.Catalog(s.catalog_url).begin() as conn:
        assert {r.delivery_id: (r.time_lo, r.time_hi, r.replaces)
                for r in conn.execute(sa.select(cat.curated_spans))} == spans
    assert state.has_other_accepted(c.id, recs[0]) and not state.has_other_accepted(contracts[PRESS].id, recs[0])


def test_personal_column_pseudonymised(lab: Path, tmp_path: Path, contracts) -> None:
    c = contracts[PRESS]
    gen = sample.generate(c, 3_000, seed=5, start=START)
    _, df = _land_and_curate(c, gen, tmp_path / "p.csv")
    badges = df["operator_badge"].drop_nulls()
    assert len(badges) and badges.str.contains(r"^ps_[0-9a-f]{16}$").all()
    assert not df["operator_badge"].cast(pl.String).str.contains("^B[0-9]{5}$").any()
    # stable: the same badge gets the same pseudonym in another delivery
    raw = set(gen.frame["operator_badge"].unique().to_list())
    assert df["operator_badge"].n_unique() == len(raw)


def test_wide_layout_unpivots(lab: Path, tmp_path: Path, contracts) -> None:
    c = contracts[PUMPS]
    gen = sample.generate(c, 2_000, seed=9, start=START)
    st, df = _land_and_curate(c, gen, tmp_path / "w.csv")
    assert set(df["sensor"].unique()) == {"pump_temp", "discharge_pressure", "flow", "vibration"}
    assert st.rows_out == 4 * (gen.truth["rows"] - gen.truth["exact_duplicates"])


def test_cmapss_real_curation(lab: Path, realdata: Path, contracts) -> None:
    c = contracts[CMAPSS]
    rec = landing.push(c, [realdata / "cmapss/train_FD001.txt"])
    assert rec.accepted and rec.rows == 20_631
    raw = ingest.ingest_raw(c, rec.delivery_id)
    assert raw["rows"] == 20_631 * 24
    st = curate.curate_delivery(c, rec.delivery_id)
    assert st.entities == 100 and st.time_min == 1 and st.time_max == 362
    assert st.constant_sensors == sorted(["setting3", "s1", "s5", "s10", "s16", "s18", "s19"])
    assert st.exact_duplicates_removed == 0 and st.flags["flag_out_of_range"] == 0 and st.flags["flag_unit_unknown"] == 0
    # degR -> K: T2 is 518.67 degR = 288.15 K in every row
    assert st.sensors["s1"]["min"] == pytest.approx(288.15) and st.sensors["s1"]["unit"] == "K"
    # 4 temperatures (degR -> K), 4 pressures (psia -> bar), 2 coolant flows (lbm/s -> kg/s)
    assert st.values_converted == 20_631 * 10


def test_hydraulic_real_curation(lab: Path, realdata: Path, contracts) -> None:
    c = contracts[HYDRAULIC]
    rec = landing.push(c, [realdata / "hydraulic/TS1.txt", realdata / "hydraulic/VS1.txt"])
    assert rec.accepted and rec.rows == 2 * 2_205
    ingest.ingest_raw(c, rec.delivery_id)
    st = curate.curate_delivery(c, rec.delivery_id)
    assert st.rows_out == 2 * 2_205 * 60
    assert st.time_min == 0 and st.time_max == 2_205 * 60 - 1
    assert st.flags["flag_gap_before"] == 0 and st.flags["flag_out_of_range"] == 0
    assert st.sensors["TS1"]["min"] == pytest.approx(34.984) and st.sensors["VS1"]["max"] == pytest.approx(2.546)


def test_plan_has_no_python_udfs(contracts) -> None:
    c = contracts[SPINDLE]
    raw = pl.LazyFrame(schema={"delivery_id": pl.String, **__import__("datalab.timeseries.readers").timeseries.readers.long_schema(c)})
    plan = curate.build_plan(c, raw).explain()
    assert "python" not in plan.lower() and "map_" not in plan.lower()


@pytest.mark.parametrize(("split_from", "tail_min"), [(None, None), (1, None), (None, 0)],
                         ids=["filtered", "split", "small-last-part"])
def test_series_buckets_give_the_same_table(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch,
                                            split_from: int | None, tail_min: int | None) -> None:
    """A delivery curated in series buckets (bounded memory) equals the one-go result, row for row,
    whether each bucket filters the raw rows or the rows were split into a file per bucket first,
    and with a series of the last bucket moved to a part of its own (curate.small_last_part)."""
    from datalab.timeseries import split

    if tail_min is not None:
        monkeypatch.setattr(curate, "TAIL_SERIES_MIN_ROWS", tail_min)
        made: list[tuple[list[list[int]], list[list[int]]]] = []
        real = curate.small_last_part
        monkeypatch.setattr(curate, "small_last_part", lambda b, n: made.append((b, real(b, n))) or made[-1][1])
    if split_from is not None:
        monkeypatch.setattr(split, "SPLIT_FROM_PARTS", split_from)
        monkeypatch.setattr(split, "BATCH_ROWS", 1_000)  # several batches, several flushes per part
        monkeypatch.setattr(split, "FLUSH_ROWS", 300)
    c = contracts[PRESS]  # personal attribute (pseudonym join) and key duplicates
    gen = sample.generate(c, 9_000, seed=11, start=START)
    st_one, one = _land_and_curate(c, gen, tmp_path / "one.csv")
    assert st_one.series_buckets == 1
    # (with the cut: four buckets of two or three series, spread; else first fit, the last of one series)
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "4000" if tail_min is not None else "2000")
    gen2 = sample.generate(c, 9_000, seed=11, start=START)
    sample.write(gen2, tmp_path / "two.csv")
    # same rows, another delivery: re-push needs other bytes, so append a blank line
    with open(tmp_path / "two.csv", "a") as f:
        f.write("\n")
    rec = landing.push(c, [tmp_path / "two.csv"], correction=True)  # the same readings again: not repeats
    assert rec.accepted, rec.reasons
    st_many = curate.curate_delivery(c, rec.delivery_id)
    assert st_many.series_buckets > 1
    assert f"{st_many.series_buckets} buckets" in st_many.engine["device"]
    if tail_min is not None:
        (before, after), = made
        assert len(after) == len(before) + 1 == st_many.series_buckets  # the last part was cut
    assert not list(curate.curated_path(c, rec.delivery_id, __import__("datalab.config").config.settings()).parent.glob(".*.parts"))
    many = pl.read_parquet(curate.curated_path(c, rec.delivery_id, __import__("datalab.config").config.settings()))
    keys = ["entity", "sensor", "time", "raw_value", "raw_unit"]
    a, b = one.drop("delivery_id", "flag_late").sort(keys), many.drop("delivery_id", "flag_late").sort(keys)
    # the same columns and types from both writers, provenance last (Polars' and the part writer's)
    assert list(one.schema.items()) == list(many.schema.items()) and one.columns[-3:] == list(curate.PROVENANCE)
    assert a.equals(b)
    assert {k: st_one.flags[k] for k in curate.FLAGS if k != "flag_late"} == {k: st_many.flags[k] for k in curate.FLAGS if k != "flag_late"}


def test_the_table_handed_on_is_the_file_and_the_suite_says_the_same_of_both(lab: Path, tmp_path: Path, contracts,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``on_written`` gets what the file holds (provenance included) for a delivery curated in one part, and
    nothing for one curated in buckets; the suite's report on that table equals its report on the file."""
    from datalab.config import settings
    from datalab.quality.validate import validate

    c = contracts[PRESS]  # defects, a personal attribute (pseudonyms)
    sample.write(sample.generate(c, 6_000, seed=5, start=START), tmp_path / "a.csv")
    rec = landing.push(c, [tmp_path / "a.csv"])
    assert rec.accepted, rec.reasons
    got: list[pl.DataFrame] = []
    curate.curate_delivery(c, rec.delivery_id, on_written=got.append)
    path = curate.curated_path(c, rec.delivery_id, settings())
    [frame] = got
    assert frame.equals(pl.read_parquet(path)) and frame.columns[-3:] == list(curate.PROVENANCE)
    run_keys = {"seconds", "report_path", "run_name"}
    a = validate(c, frame, run_name=rec.delivery_id, build_docs=False).to_dict()
    b = validate(c, path, run_name=rec.delivery_id, build_docs=False).to_dict()
    assert a["evaluated"] > 10 and a["engine"] == "polars"
    assert {k: v for k, v in a.items() if k not in run_keys} == {k: v for k, v in b.items() if k not in run_keys}
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "2000")
    got.clear()
    curate.curate_delivery(c, rec.delivery_id, on_written=got.append)
    assert got == []


def test_curated_output_is_deterministic(lab: Path, tmp_path: Path, contracts) -> None:
    """Curating the same delivery twice writes the same bytes (sorted, ties broken by every column)."""
    c = contracts[SPINDLE]
    gen = sample.generate(c, 8_000, seed=5, start=START)
    _, first = _land_and_curate(c, gen, tmp_path / "d.csv")
    d = first["delivery_id"][0]
    again = curate.curate_delivery(c, d)
    second = pl.read_parquet(curate.curated_path(c, d, __import__("datalab.config").config.settings()))
    assert again.rows_out == len(first)
    assert first.equals(second)


def test_push_writes_the_raw_table_once(lab: Path, tmp_path: Path, contracts) -> None:
    """The push check's parse becomes the raw table; ingest keeps it; a re-parse gives the same table."""
    from datalab.config import settings

    c = contracts[SPINDLE]
    path = sample.write(sample.generate(c, 5_000, seed=9, start=START), tmp_path / "d.csv")
    rec = landing.push(c, [path])
    raw = ingest.raw_path(c, rec.delivery_id, settings())
    assert raw.exists(), "an accepted push leaves its raw table"
    pushed = pl.read_parquet(raw)
    # min/max kept where they can prune (time, value, the series columns), not for other text
    import pyarrow.parquet as pq

    rg = pq.ParquetFile(raw).metadata.row_group(0)
    stats = {rg.column(i).path_in_schema: rg.column(i).statistics for i in range(rg.num_columns)}
    assert stats["time"] is not None and stats["time"].has_min_max and stats["raw_value"].has_min_max
    assert stats["entity"].has_min_max and stats["sensor"].has_min_max
    assert stats["raw_unit"] is None and stats["delivery_id"] is None
    st = ingest.ingest_raw(c, rec.delivery_id)
    assert st["parsed_at"] == "push" and st["rows"] == len(pushed) and st["records"] == rec.rows
    st2 = ingest.ingest_raw(c, rec.delivery_id, reparse=True)
    assert st2["parsed_at"] == "ingest"
    assert pl.read_parquet(raw).equals(pushed)
    # a rejected push leaves no raw table and no temporary file behind
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace(",Cel", ",Cel,extra", 3))
    rej = landing.push(c, [bad])
    assert not rej.accepted
    assert not ingest.raw_path(c, rej.delivery_id, settings()).exists()
    assert not list(raw.parent.glob("*.tmp"))


def test_series_are_packed_by_size_into_bounded_buckets() -> None:
    """Every series lands in exactly one bucket; a bucket exceeds the cap only when one series alone does."""
    raw = pl.LazyFrame({
        "entity": ["a"] * 900 + ["a"] * 500 + ["b"] * 400 + ["b"] * 300 + ["c"] * 2500 + [None] * 50 + ["d"] * 10,
        "sensor": ["t"] * 900 + ["p"] * 500 + ["t"] * 400 + ["p"] * 300 + ["t"] * 2500 + ["t"] * 50 + [None] * 10,
    }).with_row_index("v")
    sizes = curate.series_sizes(raw)
    assert sorted(sizes["n"].to_list()) == [10, 50, 300, 400, 500, 900, 2500]
    buckets = curate.series_buckets(sizes, 1000)
    n_of = dict(sizes.select("h", "n").iter_rows())
    loads = [sum(n_of[h] for h in b) for b in buckets]
    assert sorted(h for b in buckets for h in b) == sorted(n_of)  # each series exactly once
    assert all(load <= 1000 or len(b) == 1 for load, b in zip(loads, buckets, strict=True))
    assert sorted(loads) == [300, 900, 960, 2500]  # 2500 alone | 900+50+10 | 500+400 | 300 (first fit, decreasing)
    # rows with a null entity or sensor are found by their bucket like any other; no row twice
    got = pl.concat([curate.bucket_rows(raw, b).collect() for b in buckets])
    assert sorted(got["v"].to_list()) == list(range(raw.select(pl.len()).collect().item()))
    # picked by the series' names (a bucket of few series), the same rows as by their hashes, nulls too
    series = raw.select("sensor", "entity").unique().collect()
    for b in buckets:
        by_hash = curate.bucket_rows(raw, b).collect()
        assert curate.bucket_rows(raw, b, series).collect().equals(by_hash)
    assert curate.bucket_rows(raw, [], series).collect().is_empty()



def test_a_delivery_over_one_bucket_is_spread_over_at_least_four() -> None:
    """Fewer buckets than asked for: series go to the least loaded of four, never over the cap."""
    sizes = pl.DataFrame({"h": list(range(12)), "n": [846, 845, 844, 843, 842, 841, 840, 839, 838, 837, 836, 835]},
                         schema={"h": pl.UInt64, "n": pl.UInt32})
    assert len(curate.series_buckets(sizes, 8000)) == 2  # first fit alone: 9 series, then 3
    spread = curate.series_buckets(sizes, 8000, at_least=4)
    assert len(spread) == 4 and sorted(h for b in spread for h in b) == list(range(12))
    n_of = dict(sizes.rows())
    assert sorted(sum(n_of[h] for h in b) for b in spread) == [2520, 2521, 2522, 2523]
    # fewer series than buckets asked for: one bucket per series
    lopsided = pl.DataFrame({"h": [1, 2, 3], "n": [900, 50, 40]}, schema={"h": pl.UInt64, "n": pl.UInt32})
    assert curate.series_buckets(lopsided, 950) == [[1, 2], [3]]
    assert sorted(curate.series_buckets(lopsided, 950, at_least=4)) == [[1], [2], [3]]


def test_the_last_part_is_cut_to_its_smallest_long_enough_series() -> None:
    """The last bucket's smallest series goes to a part of its own, at the end, when it is long enough to
    pay for the plan it adds; a last bucket of one series, or a short smallest series, is left as it is."""
    n = curate.TAIL_SERIES_MIN_ROWS
    sizes = {1: 3 * n, 2: 2 * n, 3: 2 * n, 4: n, 5: n // 2}
    assert curate.small_last_part([[1], [3, 4, 2]], sizes) == [[1], [3, 2], [4]]
    assert curate.small_last_part([[2, 3], [1]], sizes) == [[2, 3], [1]]
    assert curate.small_last_part([[1], [2, 5]], sizes) == [[1], [2, 5]]  # 5 is too short to pay
    assert curate.small_last_part([], sizes) == []
    moved = curate.small_last_part([[1, 2], [3, 4]], sizes)
    assert sorted(h for b in moved for h in b) == [1, 2, 3, 4] and moved[-1] == [4]


def test_parts_are_written_in_order_and_a_failed_part_leaves_no_file(tmp_path: Path) -> None:
    """The part writer overlaps writing with the next part's plan: order kept, nothing left behind on error."""
    from datalab.engine import Engine

    eng = Engine("cpu")
    plans = [pl.LazyFrame({"k": list(range(i * 1000, (i + 1) * 1000)), "s": [f"p{i}"] * 1000}) for i in range(4)]
    out = tmp_path / "ok.parquet"
    run = eng.sink_parquet_parts(plans, out)
    assert "4 buckets" in run.device
    assert pl.read_parquet(out).equals(pl.concat([p.collect() for p in plans]))
    # constant columns: plain strings on every row of every part
    const = {"tenant": "acme", "contract_version": "2.1.0"}
    eng.sink_parquet_parts(plans, tmp_path / "const.parquet", const)
    got = pl.read_parquet(tmp_path / "const.parquet")
    assert got.equals(pl.concat([p.collect() for p in plans]).with_columns(tenant=pl.lit("acme"), contract_version=pl.lit("2.1.0")))
    eng.sink_parquet(plans[0], tmp_path / "one.parquet", const)
    assert pl.read_parquet_schema(tmp_path / "one.parquet") == got.schema
    bad = [*plans[:2], pl.LazyFrame({"k": ["x"]}).select(pl.col("k").cast(pl.Int64, strict=True)), plans[3]]
    failed = tmp_path / "failed.parquet"
    with pytest.raises(pl.exceptions.InvalidOperationError):
        eng.sink_parquet_parts(bad, failed)
    assert not failed.exists() and not failed.with_suffix(".parquet.tmp").exists()
    # a part whose schema differs from the first fails in the writer thread and reaches the caller
    mixed = [plans[0], pl.LazyFrame({"k": [1.5], "s": ["x"]}), plans[2]]
    with pytest.raises(ValueError, match="schema"):
        eng.sink_parquet_parts(mixed, tmp_path / "mixed.parquet")
    assert not (tmp_path / "mixed.parquet").exists() and not (tmp_path / "mixed.parquet.tmp").exists()


def _profile_read_back(path: Path) -> dict:
    """The curated file's counts from one pass over it (what curate_delivery computed before it counted the parts)."""
    lf = pl.scan_parquet(path)
    agg = lf.select(
        rows=pl.len(), entities=pl.col("entity").n_unique(),
        values_converted=(pl.col("value").is_not_null() & (pl.col("value") != pl.col("raw_value"))).sum(),
        time_min=pl.col("time").min(), time_max=pl.col("time").max(), **{f: pl.col(f).sum() for f in curate.FLAGS},
    ).collect().row(0, named=True)
    per = lf.group_by("sensor").agg(
        n=pl.len(), nulls=pl.col("value").null_count(), min=pl.col("value").min(), max=pl.col("value").max(),
        mean=pl.col("value").mean(), std=pl.col("value").std(), unit=pl.col("unit").first(),
        out_of_range=pl.col("flag_out_of_range").sum(), outliers=pl.col("flag_outlier").sum(),
    ).sort("sensor").collect(engine="streaming")
    return {"agg": agg, "sensors": {r.pop("sensor"): r for r in per.iter_rows(named=True)}}


@pytest.mark.parametrize("bucket_rows", [None, "5000", "1500"], ids=["one-part", "buckets", "long-series-chunks"])
def test_profile_counted_from_the_parts_equals_reading_the_file(lab: Path, tmp_path: Path, contracts, bucket_rows,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts, ranges, first units and watermarks gathered per part add up to the file's; mean and std are the file's."""
    from datalab.config import settings
    from datalab.store import catalog as cat

    if bucket_rows:
        monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", bucket_rows)
    c = contracts[SPINDLE]
    st, df = _land_and_curate(c, sample.generate(c, 24_000, seed=17, start=START), tmp_path / "d.csv")
    assert st.series_buckets > 1 if bucket_rows else st.series_buckets == 1
    if bucket_rows == "1500":
        assert st.long_series["series"] > 0
    d = df["delivery_id"][0]
    want = _profile_read_back(curate.curated_path(c, d, settings()))
    a = want["agg"]
    assert (st.rows_out, st.entities, st.values_converted) == (a["rows"], a["entities"], a["values_converted"])
    assert (st.time_min, st.time_max) == (a["time_min"].isoformat(), a["time_max"].isoformat())
    assert st.flags == {f: a[f] for f in curate.FLAGS}
    # mean and std come from a streaming pass on both sides, whose float sums
    # may be added in another order from run to run: equal to 12 digits;
    # everything else is exact
    spread = ("mean", "std")
    assert {k: {f: v for f, v in got.items() if f not in spread} for k, got in st.sensors.items()} == \
        {k: {f: v for f, v in read.items() if f not in spread} for k, read in want["sensors"].items()}
    for k, read in want["sensors"].items():
        assert [st.sensors[k][f] for f in spread] == pytest.approx([read[f] for f in spread], rel=1e-12, nan_ok=True)
    with cat.Catalog(settings().catalog_url).begin() as conn:
        stored = dict(conn.execute(cat.sa.select(cat.watermarks.c.entity, cat.watermarks.c.max_time)
                                   .where(cat.watermarks.c.delivery_id == d)).all())
    latest = df.group_by("entity").agg(curate.TIME_INT.max())
    assert stored == dict(latest.iter_rows())


def test_split_rows_keeps_each_parts_rows_in_order(tmp_path: Path) -> None:
    """split.split_rows: every row once, in its part, in the order read; empty parts written; a row
    with no part refused with the file and the row named, and nothing left behind."""
    from datalab.timeseries import split

    n = 10_000
    df = pl.DataFrame({"entity": [f"M{i % 7}" for i in range(n)], "sensor": [f"s{i % 3}" for i in range(n)],
                       "i": list(range(n))})
    src = tmp_path / "raw.parquet"
    df.write_parquet(src, row_group_size=1_500)
    part = pl.col("entity").str.slice(1).cast(pl.Int32) % 3  # parts 0-2; part 3 gets no row
    files = split.split_rows(src, part, 4, tmp_path / "parts")
    got = [pl.read_parquet(f) for f in files]
    assert [g.height for g in got] == [df.filter(part == k).height for k in range(4)] and got[3].is_empty()
    assert got[3].columns == df.columns
    for k in range(3):
        assert got[k].equals(df.filter(part == k))  # the same rows in the same order
    with pytest.raises(ValueError, match=r"raw\.parquet: row .* belongs to no part"):
        split.split_rows(src, pl.when(pl.col("i") < 9_000).then(pl.lit(0, pl.Int32)), 1, tmp_path / "bad")
    assert not list((tmp_path / "bad").glob("*.parquet"))


def test_the_raw_table_is_split_only_where_filtering_it_per_part_costs_more() -> None:
    """Filters of a few series by name are cheap; many parts, or buckets picked by hash, pay for one split pass."""
    one_series = [[h] for h in range(12)]  # 50 M spindle rows: twelve buckets of one series
    assert not curate.split_pays(one_series, 0)
    assert not curate.split_pays([[1, 2, 3]] * 4, 0)  # 10 M rows: four buckets of three
    assert not curate.split_pays([], 12)  # twelve long series, each streamed to its own file
    assert curate.split_pays([[h] for h in range(40)], 0)
    hashed = [list(range(curate.NAMED_SERIES_MAX + 1))] * 8  # buckets past the named limit: picked by hash
    assert curate.split_pays(hashed, 0) and not curate.split_pays(hashed[:4], 0)
    assert curate.scan_weight(1) < curate.scan_weight(3) < curate.scan_weight(curate.NAMED_SERIES_MAX + 1)


def _reader_batches(c, path: Path) -> list[pl.DataFrame]:
    from datalab.intake.formats import sniff
    from datalab.timeseries.readers import TimeseriesReader

    reader = TimeseriesReader(c, path, path.name, sniff(path, path.name, c.layout.delimiter))
    batches = list(reader.batches())
    assert not reader.problems
    return batches


def test_raw_table_row_groups_hold_one_series_each_in_delivery_order(lab: Path, tmp_path: Path, contracts,
                                                                      monkeypatch) -> None:
    """The raw writer cuts its rows by series: a row group per series where it has enough rows, in delivery order.

    The statistics of such a row group name one sensor and one entity, so a
    scan for some series skips the others; rows without enough of their
    series, or without a sensor or an entity, go to a mixed row group.
    Nothing is lost, nothing added, and every series' rows keep the order
    they were delivered in.
    """
    import pyarrow.parquet as pq

    from datalab.config import settings

    c = contracts[SPINDLE]
    gen = sample.generate(c, 24_000, seed=7, start=START)
    batches = _reader_batches(c, sample.write(gen, tmp_path / "d.csv"))
    # A rare series (a few rows) and rows without a sensor or entity, spread over the batches.
    extra = batches[0].head(30).with_columns(
        sensor=pl.when(pl.int_range(pl.len()) % 3 == 0).then(None).otherwise(pl.lit("rare_sensor")),
        entity=pl.when(pl.int_range(pl.len()) % 3 == 1).then(None).otherwise(pl.col("entity")))
    batches = [*batches[:1], extra, *batches[1:]]
    monkeypatch.setattr(ingest.RawWriter, "GROUP_ROWS", 7_000)
    monkeypatch.setattr(ingest.RawWriter, "SERIES_GROUP_MIN", 300)
    w = ingest.RawWriter(c, "d-series-groups", settings())
    for b in batches:
        w.write(b)
    w.commit()
    delivered = pl.concat(batches).select(pl.lit("d-series-groups").alias("delivery_id"), *ingest.long_schema(c))
    got = pl.read_parquet(w.path)
    assert got.height == delivered.height
    series = ["sensor", "entity"]
    assert got.sort(got.columns, nulls_last=True).equals(delivered.sort(delivered.columns, nulls_last=True))
    for key, rows in delivered.group_by(series):
        same = pl.all_horizontal(pl.col(k).eq_missing(v) for k, v in zip(series, key, strict=True))
        assert got.filter(same).equals(rows), key  # the series' rows, in delivery order
    md = pq.ParquetFile(w.path).metadata
    one_series, mixed = 0, 0
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        st = {rg.column(j).path_in_schema: rg.column(j).statistics for j in range(rg.num_columns)}
        assert st["sensor"].has_min_max and st["entity"].has_min_max
        single = st["sensor"].min == st["sensor"].max and st["entity"].min == st["entity"].max \
            and not st["sensor"].null_count and not st["entity"].null_count
        one_series += single
        mixed += not single
    assert md.num_row_groups > 12 and one_series >= md.num_row_groups - 4, (one_series, md.num_row_groups)
    assert mixed >= 1  # the rare series and the rows without a sensor or entity
    assert ingest.written_by_series(w.path)  # (its footer says so: curation then cuts more buckets)
    monkeypatch.setattr(ingest.RawWriter, "SERIES_GROUP_MIN", 10**9)
    w2 = ingest.RawWriter(c, "d-in-delivery-order", settings())
    for b in batches:
        w2.write(b)
    w2.commit()
    assert not ingest.written_by_series(w2.path) and pl.read_parquet(w2.path).drop("delivery_id").equals(
        delivered.drop("delivery_id"))
    # Every series' hash number the same: one bucket of several series, found and written as a mixed group.
    monkeypatch.setattr(ingest.RawWriter, "SERIES_GROUP_MIN", 300)
    monkeypatch.setattr(ingest, "SERIES_BUCKETS", 1)
    w3 = ingest.RawWriter(c, "d-one-bucket", settings())
    for b in batches:
        w3.write(b)
    w3.commit()
    got3 = pl.read_parquet(w3.path)
    assert not ingest.written_by_series(w3.path) and got3.height == delivered.height
    for key, rows in delivered.group_by(series):
        same = pl.all_horizontal(pl.col(k).eq_missing(v) for k, v in zip(series, key, strict=True))
        assert got3.filter(same).drop("delivery_id").equals(rows.drop("delivery_id")), key
    # A scan for one series reads only its row groups (and the mixed ones).
    pick = (pl.col("sensor") == "vibration") & (pl.col("entity") == delivered["entity"].drop_nulls()[0])
    assert pl.scan_parquet(w.path).filter(pick).collect().equals(delivered.filter(pick))


def test_curation_is_the_same_whatever_the_raw_tables_row_groups(lab: Path, tmp_path: Path, contracts,
                                                                 monkeypatch) -> None:
    """The same delivery curated from a raw table cut by series and from one in delivery order: the same bytes' rows."""
    from datalab.config import settings

    c = contracts[SPINDLE]
    gen = sample.generate(c, 24_000, seed=11, start=START)
    path = sample.write(gen, tmp_path / "d.csv")
    monkeypatch.setattr(ingest.RawWriter, "GROUP_ROWS", 6_000)
    monkeypatch.setattr(ingest.RawWriter, "SERIES_GROUP_MIN", 200)
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "8000")  # several buckets, each a scan by series
    monkeypatch.setattr(curate, "BUCKET_MIN_ROWS", 1_000)  # by series: a bucket per series
    rec = landing.push(c, [path])
    assert rec.accepted, rec.reasons
    import pyarrow.parquet as pq

    raw = ingest.raw_path(c, rec.delivery_id, settings())
    assert pq.ParquetFile(raw).metadata.num_row_groups >= 12  # a row group per series
    by_series = curate.curate_delivery(c, rec.delivery_id)
    a = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    # the raw table again, in delivery order (no series has enough rows for a group of its own)
    monkeypatch.setattr(ingest.RawWriter, "SERIES_GROUP_MIN", 10**9)
    w = ingest.RawWriter(c, rec.delivery_id, settings())
    for b in _reader_batches(c, path):
        w.write(b)
    w.commit()
    assert pq.ParquetFile(raw).metadata.num_row_groups < 12
    in_order = curate.curate_delivery(c, rec.delivery_id)
    b = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    assert by_series.series_buckets >= 12 > in_order.series_buckets > 1 and a.height == by_series.rows_out
    # the same rows; the parts come in another order (first fit packs the four buckets largest first)
    assert a.equals(b.sort("sensor", "entity", "time", nulls_last=True, maintain_order=True))
    assert by_series.flags == in_order.flags and by_series.exact_duplicates_removed == in_order.exact_duplicates_removed


def test_a_raw_table_written_by_series_is_curated_in_a_bucket_per_series() -> None:
    """One bucket per series (down to BUCKET_MIN_ROWS rows each) only where each is still picked by name."""
    m, per = curate.MIN_BUCKETS, curate.BUCKET_MIN_ROWS
    assert curate.buckets_wanted(12, 20 * per, by_series=True) == 12
    assert curate.buckets_wanted(12, 20 * per, by_series=False) == m  # read whole for every bucket: as before
    assert curate.buckets_wanted(12, 6 * per, by_series=True) == 6  # no bucket under BUCKET_MIN_ROWS
    assert curate.buckets_wanted(24, 20 * per, by_series=True) == 20
    assert curate.buckets_wanted(3, 20 * per, by_series=True) == m
    assert curate.buckets_wanted(1_000, 20 * per, by_series=True) == m  # buckets picked by hash: whole reads


def test_a_bucket_of_one_series_takes_its_rank_as_a_constant() -> None:
    """SeriesOrder.one_series: the rank looked up row by row, for one series known in advance; never for two."""
    table = pl.DataFrame({"sensor": ["vibration", "temp", "temp", None], "entity": ["M1", "M1", "M2", "M1"],
                          "n": [5, 5, 5, 5], "t_min": [0, 0, 0, 0], "t_max": [9, 9, 9, 9]})
    order = curate.series_order(table)
    assert order is not None
    rows = pl.DataFrame({"sensor": ["temp", "temp", None, "vibration"], "entity": ["M2", "M2", "M1", "M1"]})
    looked_up = rows.select(order.rank()).to_series().to_list()
    for i, r in enumerate(rows.iter_rows(named=True)):
        h = pl.DataFrame(r, schema={"sensor": pl.String, "entity": pl.String}).select(curate.SERIES_HASH).item()
        one = order.one_series([h])
        assert one.only == looked_up[i]  # a null sensor too
        mine = rows.filter(pl.col("sensor").eq_missing(r["sensor"]) & pl.col("entity").eq_missing(r["entity"]))
        assert mine.with_columns(one.rank())["_s"].to_list() == mine.with_columns(order.rank())["_s"].to_list()
    h = rows.head(1).select(curate.SERIES_HASH).item()
    assert order.one_series([h, h + 1]).only is None  # a bucket of two series
    twice = curate.SeriesOrder(pl.concat([order.series, order.series]), order.t0, order.stride, order.nulls)
    assert twice.one_series([h]).only is None  # a hash two series share: looked up row by row


def test_the_plan_of_a_one_series_bucket_is_the_plan_of_any_bucket(contracts, tmp_path: Path) -> None:
    """Rank, lookups and the median and MAD of one series known in advance: the same rows and flags."""
    c = contracts[SPINDLE]
    path = sample.write(sample.generate(c, 24_000, seed=23, start=START), tmp_path / "d.csv")
    raw = pl.concat(_reader_batches(c, path)).with_columns(delivery_id=pl.lit("d-one")).select(
        "delivery_id", *ingest.long_schema(c))
    # in range (0-150 °C) but far from the series' median (about 40 °C): robust outliers, one reading in ten
    # (so many that a mean in place of the median would hide them)
    spike = (pl.col("sensor") == "spindle_temp") & (pl.col("raw_unit") == "Cel") & (pl.int_range(pl.len()) % 10 == 0)
    raw = raw.with_columns(raw_value=pl.when(spike).then(pl.lit(149.0)).otherwise(pl.col("raw_value")))
    table = curate.series_table(raw.lazy())
    order = curate.series_order(table)
    assert order is not None
    outliers = 0
    for r in table.sort("sensor", "entity", nulls_last=True).iter_rows(named=True):
        one = raw.filter(pl.col("sensor").eq_missing(r["sensor"]) & pl.col("entity").eq_missing(r["entity"]))
        narrowed = order.one_series([one.head(1).select(curate.SERIES_HASH).item()])
        assert narrowed.only is not None
        want = curate.build_plan(c, one.lazy(), order=order).collect()
        got = curate.build_plan(c, one.lazy(), order=narrowed).collect()
        assert got.equals(want), r
        outliers += int(got["flag_outlier"].sum())
    assert outliers > 0  # the median and MAD were put to work
