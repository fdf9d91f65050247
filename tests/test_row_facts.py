"""The card's counts kept by curation and merged at publish equal the counts over the version's rows (issue 21).

Curation counts the card's fine counts and sensor moments on each part while
it is in memory (``datalab.store.row_facts``) and stores the delivery's total
with its statistics; publish merges the deliveries' instead of two passes over
the version. The tests compare both ways on real curations (one delivery in
buckets, one in a single plan, two contracts), cut a delivery into parts
anywhere, and check every case where the stored facts must not stand for the
rows: none stored, another Polars, other flag columns or types, rows replaced
by a correction, too many fine counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from datalab.config import settings
from datalab.store import datasheet, publish, row_facts, state
from datalab.store.storage import store
from datalab.timeseries import curate
from tests.conftest import CMAPSS, HYDRAULIC, PUMPS, SPINDLE, deliver_validated, lab_with_dataset

START = dt.datetime(2026, 5, 4, 6, tzinfo=dt.UTC)
NAME = "facts"
FLOATS = ("mean", "std")


@pytest.fixture(scope="module")
def flab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two spindle deliveries (3,000 readings curated in buckets of 1,000, and 400 in one plan) and one of pumps."""
    root = tmp_path_factory.mktemp("rowfacts")
    with lab_with_dataset(root, NAME, [SPINDLE, PUMPS], DATALAB_CURATE_BUCKET_ROWS="1000") as (spec, _):
        big = deliver_validated(spec, SPINDLE, 3000, 21, START, root)
        small = deliver_validated(spec, SPINDLE, 400, 22, START + dt.timedelta(days=3), root)
        pumps = deliver_validated(spec, PUMPS, 500, 23, START, root)
        yield {"big": big, "small": small, "pumps": pumps}


def _plan() -> tuple[publish.VersionPlan, tuple[str, ...]]:
    s = settings()
    here = store(s).session().__enter__()  # local store: the curated files are where they are
    vp = publish.plan_version(NAME, "test", s, here)
    return vp, tuple(dict.fromkeys(f for k in vp.kinds for f in k.flag_words))


def _sorted(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return df.sort(keys, nulls_last=True)


def _assert_sensors_equal(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.columns == want.columns and got.height == want.height
    exact = [c for c in want.columns if c not in FLOATS]
    assert got.select(exact).equals(want.select(exact)), (got, want)
    for c in FLOATS:
        for a, b in zip(got[c].to_list(), want[c].to_list(), strict=True):
            assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=1e-9, abs=1e-12)), (c, a, b)


def test_curation_stores_the_facts_of_each_delivery(flab: dict[str, Any]) -> None:
    s = settings()
    for d in (flab["big"], flab["small"], flab["pumps"]):
        st = state.get(d, s)["stats"]
        facts = (json.loads(st) if isinstance(st, str) else st)["curated"]["card_facts"]
        assert facts["format"] == row_facts.FORMAT and facts["polars"] == pl.__version__
        assert sum(facts["fine"]["rows"]) == sum(facts["sensors"]["rows"]) == (json.loads(st) if isinstance(st, str) else st)["curated"]["rows_out"]


def _assert_merged_equal_counted(vp: publish.VersionPlan, flags: tuple[str, ...]) -> None:
    """Fine counts identical; sensor statistics identical but the floats' last bits; the card's every pass equal."""
    stored = publish.stored_facts(vp, flags)
    assert stored is not None and len(stored.deliveries) == len(vp.included)
    keys = row_facts.fine_keys(vp.schema, ("tenant", "contract_id"))
    want = datasheet.fine_counts(vp.schema, flags, vp.rows)
    got = stored.fine(vp.schema, flags)
    got = datasheet.named_conditions(got) if row_facts.is_ts(vp.schema) else got
    assert got.schema == want.schema
    assert _sorted(got, keys).equals(_sorted(want, keys))
    merged = datasheet.row_passes(vp.schema, flags, vp.rows, stored)
    counted = datasheet.row_passes(vp.schema, flags, vp.rows)
    _assert_sensors_equal(merged.sensors, counted.sensors)
    assert merged.coverage.rows.equals(counted.coverage.rows)
    assert [list(a) for a in merged.samples] == [list(b) for b in counted.samples]
    assert datasheet.near_duplicates_of(merged.fine) == datasheet.near_duplicates_of(counted.fine)


def test_merged_facts_equal_the_counts_over_the_version(flab: dict[str, Any]) -> None:
    """Two contracts, one delivery curated in buckets, one in a single plan."""
    vp, flags = _plan()
    assert len(vp.included) == 3
    _assert_merged_equal_counted(vp, flags)


@pytest.mark.parametrize(("dataset", "cid", "files"), [
    ("turbofan-cmapss", CMAPSS, ["cmapss/train_FD001.txt"]),  # index time (cycles), numbered engines, constant sensors
    ("hydraulic-rig", HYDRAULIC, ["hydraulic/TS1.txt", "hydraulic/VS1.txt"]),  # wide files, one delivery of two
])
def test_real_files_give_the_same_card_both_ways(lab: Path, realdata: Path, contracts, dataset: str, cid: str,
                                                 files: list[str]) -> None:
    from datalab.intake import landing
    from datalab.quality import validate
    from datalab.timeseries import ingest

    c, s = contracts[cid], settings()
    rec = landing.push(c, [realdata / f for f in files])
    assert rec.accepted, rec.reasons
    ingest.ingest_raw(c, rec.delivery_id, s)
    curate.curate_delivery(c, rec.delivery_id, s=s)
    rep = validate.validate(c, curate.curated_path(c, rec.delivery_id, s), run_name=rec.delivery_id, build_docs=False)
    state.set_stage(rec.delivery_id, "validated", s=s, validation_ok=rep.success, validation=rep.to_dict())
    with store(s).session() as here:
        vp = publish.plan_version(dataset, "test", s, here)
        _assert_merged_equal_counted(vp, tuple(dict.fromkeys(f for k in vp.kinds for f in k.flag_words)))


def test_a_delivery_cut_into_parts_anywhere_gives_the_same_facts(flab: dict[str, Any]) -> None:
    s = settings()
    df = pl.read_parquet(s.home / state.get(flab["big"], s)["curated_path"]).drop("delivery_id", strict=False)
    schema = {k: str(v) for k, v in df.schema.items()}
    whole = row_facts.delivery_facts([row_facts.part_facts(df, curate.FLAGS)], schema, curate.FLAGS)
    cuts = [0, 1, 777, 778, 2100, df.height]  # a part of one row, parts cutting series and shifts
    parts = row_facts.delivery_facts([row_facts.part_facts(df.slice(a, b - a), curate.FLAGS) for a, b in itertools.pairwise(cuts)],
                                     schema, curate.FLAGS)
    assert whole is not None and parts is not None
    keys = ["entity", "sensor", "condition"]
    assert _sorted(pl.DataFrame(parts["fine"]), keys).equals(_sorted(pl.DataFrame(whole["fine"]), keys))
    a, b = pl.DataFrame(parts["sensors"]), pl.DataFrame(whole["sensors"])
    exact = [c for c in b.columns if c not in ("mean", "m2")]
    assert a.select(exact).equals(b.select(exact))
    for c in ("mean", "m2"):
        assert a[c].to_list() == pytest.approx(b[c].to_list(), rel=1e-9)


def test_facts_that_do_not_hold_for_the_version_are_not_used(flab: dict[str, Any]) -> None:
    """Each reason to count from the rows: none stored, another form or Polars, other flags or types."""
    vp, flags = _plan()
    types = dict(vp.rows.collect_schema())
    stored = publish.stored_facts(vp, flags)
    assert stored is not None
    good = stored.deliveries
    lits, facts = good[0]
    cases = {
        "no facts stored": None,
        "stored in form": {**facts, "format": row_facts.FORMAT + 1},
        "counted by Polars 0.0.1": {**facts, "polars": "0.0.1"},
        "counted for other flag columns": {**facts, "flags": facts["flags"][1:]},
        "the version holds entity with other types": {**facts, "schema": {**facts["schema"], "entity": "Int64"}},
    }
    for why, bad in cases.items():
        got, reason = row_facts.stored_for([good[1], (lits, bad), good[2]], vp.schema, types, flags)
        assert got is None and reason is not None and why in reason and reason.startswith("delivery 2 of 3"), (why, reason)
    assert row_facts.stored_for([], vp.schema, types, flags) == (None, "no deliveries")


def test_rows_replaced_by_a_correction_are_counted_from_the_rows(flab: dict[str, Any]) -> None:
    vp, flags = _plan()
    replaced = dataclasses.replace(vp, replaced_by={flab["small"]: (Path("correction.parquet"),)})
    assert publish.stored_facts(replaced, flags) is None


def test_too_many_or_too_long_fine_counts_are_not_kept(flab: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings()
    df = pl.read_parquet(s.home / state.get(flab["small"], s)["curated_path"])
    schema = {k: str(v) for k, v in df.schema.items()}
    part = row_facts.part_facts(df, curate.FLAGS)
    assert row_facts.delivery_facts([part], schema, curate.FLAGS) is not None
    fine = pl.DataFrame(row_facts.delivery_facts([part], schema, curate.FLAGS)["fine"])
    monkeypatch.setattr(row_facts, "MAX_FINE_ROWS", fine.height - 1)
    assert row_facts.delivery_facts([part], schema, curate.FLAGS) is None
    monkeypatch.setattr(row_facts, "MAX_FINE_ROWS", fine.height)
    assert row_facts.delivery_facts([part], schema, curate.FLAGS) is not None
    names = sum(len(str(x).encode()) for c in ("entity", "sensor") for x in fine[c].drop_nulls().to_list())
    monkeypatch.setattr(row_facts, "MAX_NAME_BYTES", names - 1)  # long machine ids: kept out of the catalog
    assert row_facts.delivery_facts([part], schema, curate.FLAGS) is None
    assert row_facts.delivery_facts([part], {k: v for k, v in schema.items() if k != "unit"}, curate.FLAGS) is None


def test_the_published_card_is_the_card_counted_from_the_rows(flab: dict[str, Any]) -> None:
    """The datasheet publish writes (from stored facts) has the numbers of the card counted over the table."""
    res = publish.publish(NAME)
    assert res.created and res.manifest is not None
    s = settings()
    sheet = json.loads((s.versions / NAME / res.version / "datasheet.json").read_text())
    vp, flags = _plan()
    counted = datasheet.facts(res.manifest, vp.contracts, vp.rows, s, datasheet.row_passes(vp.schema, flags, vp.rows))
    counted = json.loads(datasheet.mask(json.dumps(counted, default=str),
                                        json.loads((s.versions / NAME / res.version / "firm_masks.json").read_text())))
    for x, y in zip(sheet.pop("sensors"), counted.pop("sensors"), strict=True):
        assert {k: v for k, v in x.items() if k not in FLOATS} == {k: v for k, v in y.items() if k not in FLOATS}
        for k in FLOATS:
            assert (x[k] is None and y[k] is None) or x[k] == pytest.approx(y[k], abs=2e-6)
    assert sheet == counted


@pytest.mark.parametrize("unit", ["ns", "us", "ms"])
@pytest.mark.parametrize("zone", [None, "UTC", "Europe/Berlin"])
def test_the_shift_from_ticks_is_the_shift_of_the_calendar_hour(unit: str, zone: str | None) -> None:
    """Before and after 1970, on every hour, with nulls; another time zone keeps the calendar's hour."""
    times = pl.Series("time", [dt.datetime(1969, 12, 31, 21, 59, 59), dt.datetime(1960, 1, 1, 5, 0, 1), None,
                               *(dt.datetime(2026, 3, 29, h, 30) for h in range(24))]).cast(pl.Datetime(unit))
    df = pl.DataFrame(times).with_columns(pl.col("time").dt.replace_time_zone("UTC").dt.convert_time_zone(zone) if zone else pl.col("time"))
    want = df.select((((pl.col("time").dt.hour().cast(pl.Int8) + 2) // 8) % 3).fill_null(0))
    got = df.select(row_facts.shift_code(df.schema["time"]))
    assert got.to_series().to_list() == want.to_series().to_list()
    assert set(got.to_series().to_list()) == {0, 1, 2}


def test_a_part_out_of_series_order_is_grouped_by_its_names(flab: dict[str, Any]) -> None:
    """Segments for a part in series order, a hash group-by for one that is not: the same facts either way."""
    s = settings()
    df = pl.read_parquet(s.home / state.get(flab["big"], s)["curated_path"]).drop("delivery_id", strict=False)
    schema = {k: str(v) for k, v in df.schema.items()}
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=5)
    in_order = row_facts.run_table(df, curate.FLAGS)
    assert in_order.height < df.height // row_facts.ROWS_PER_SEGMENT  # by segment: a few per series
    scattered = row_facts.run_table(shuffled, curate.FLAGS)
    assert scattered.height == in_order.select("entity", "sensor", "condition").unique().height  # by name
    a = row_facts.delivery_facts([row_facts.PartFacts(in_order)], schema, curate.FLAGS)
    b = row_facts.delivery_facts([row_facts.PartFacts(scattered)], schema, curate.FLAGS)
    assert a is not None and b is not None
    keys = ["entity", "sensor", "condition"]
    assert _sorted(pl.DataFrame(a["fine"]), keys).equals(_sorted(pl.DataFrame(b["fine"]), keys))
    sa, sb = pl.DataFrame(a["sensors"]).sort("sensor"), pl.DataFrame(b["sensors"]).sort("sensor")
    exact = ["sensor", "rows", "nulls", "flagged", "n", "min", "max"]
    assert sa.select(exact).equals(sb.select(exact))
    assert sa["mean"].to_list() == pytest.approx(sb["mean"].to_list(), rel=1e-9)
    assert sa["m2"].to_list() == pytest.approx(sb["m2"].to_list(), rel=1e-9)
