"""Tests of datalab.quality.validate: suites derived from contracts, run with GX 1.x.

The frames are small curated long tables built by hand, so each test states
exactly which rows break which rule. Most runs skip Data Docs (building them
costs about a second); one test builds them and checks the index.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from datalab.config import settings
from datalab.contracts.contract import Contract, load_all
from datalab.quality.expectations import ExpectationSpec, mostly_from_rule
from datalab.quality.validate import load_handwritten, validate
from datalab.timeseries.schema import FLAG_COLUMNS
from datalab.timeseries.suite import PSEUDONYM_REGEX, derive_suite

BAVARIA = "urn:datalab:bavaria-spindle:spindle-telemetry"
LYON = "urn:datalab:lyon-presses:press-line"
CMAPSS = "urn:datalab:open-benchmarks:cmapss-fd001"
N = 200  # readings per sensor and entity: 1 bad reading = 0.5 % of a sensor


@pytest.fixture(scope="module")
def contracts() -> dict[str, Contract]:
    return load_all(Path(__file__).resolve().parent.parent / "data_contracts")


@pytest.fixture(autouse=True)
def lab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "lab"
    monkeypatch.setenv("DATALAB_HOME", str(home))
    return home


def curated(
    contract: Contract,
    entities: list[str],
    *,
    n: int = N,
    attributes: dict[str, object] | None = None,
) -> pl.DataFrame:
    """A clean curated long table: every sensor, ``n`` readings per entity.

    Values sit in the middle of each sensor's contract range, units are the
    canonical ones and no flag is set.
    """
    integer_time = contract.time.logical_type != "timestamp"
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    rows = []
    for m in contract.measurements:
        lo, hi = m.minimum or 0.0, m.maximum if m.maximum is not None else 100.0
        for e in entities:
            for i in range(n):
                rows.append(
                    {
                        "entity": e,
                        "time": i + 1 if integer_time else t0 + dt.timedelta(seconds=i),
                        "sensor": m.name,
                        "value": lo + (hi - lo) * (0.25 + 0.5 * i / n),
                        "unit": m.unit,
                    }
                )
    time_dtype = pl.Int64 if integer_time else pl.Datetime("us", "UTC")
    df = pl.DataFrame(
        rows,
        schema={
            "entity": pl.Utf8,
            "time": time_dtype,
            "sensor": pl.Utf8,
            "value": pl.Float64,
            "unit": pl.Utf8,
        },
    ).with_columns(
        pl.lit("d-test").alias("delivery_id"),
        pl.col("value").alias("raw_value"),
        pl.col("unit").alias("raw_unit"),
    )
    for a in contract.attributes:
        df = df.with_columns(pl.lit((attributes or {}).get(a.name)).alias(a.name))
    df = df.with_columns([pl.lit(False).alias(f) for f in FLAG_COLUMNS])
    base = ["delivery_id", "entity", "time", "sensor", "value", "unit", "raw_value", "raw_unit"]
    return df.select([*base, *(a.name for a in contract.attributes), *FLAG_COLUMNS])


def spoil(df: pl.DataFrame, sensor: str, every: int, value: float) -> pl.DataFrame:
    """Set every ``every``-th reading of ``sensor`` to ``value`` (+ its row number)."""
    i = pl.int_range(pl.len()).over("sensor")
    hit = (pl.col("sensor") == sensor) & (i % every == 0)
    return df.with_columns(
        pl.when(hit).then(value + i.cast(pl.Float64)).otherwise(pl.col("value")).alias("value"),
        pl.when(hit).then(True).otherwise(pl.col("flag_out_of_range")).alias("flag_out_of_range"),
    )


def failed_for(report, type_: str) -> list[dict]:
    return [r for r in report.failed_results() if r.type == type_]


# --------------------------------------------------------------------------
# derivation (no GX)


def test_mostly_from_rule_reads_the_bad_share() -> None:
    assert mostly_from_rule({"metric": "invalidValues", "mustBeLessThan": 3, "unit": "percent"})[
        0
    ] == pytest.approx(0.97)
    assert mostly_from_rule({"metric": "nullValues", "mustBeLessOrEqualTo": 5, "unit": "percent"})[
        0
    ] == pytest.approx(0.95)
    assert mostly_from_rule({"metric": "nullValues", "mustBe": 0})[0] == 1.0
    assert mostly_from_rule(
        {"metric": "invalidValues", "mustBeBetween": [0, 10], "unit": "percent"}
    )[0] == pytest.approx(0.9)
    mostly, note = mostly_from_rule({"metric": "nullValues", "mustBeLessThan": 10, "unit": "rows"})
    assert mostly == 1.0 and "row" in note


def test_derive_suite_for_bavaria(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    specs = derive_suite(c)
    assert all(isinstance(s, ExpectationSpec) and s.source for s in specs)
    cols = next(s for s in specs if s.type == "expect_table_columns_to_match_set")
    assert {"delivery_id", "entity", "sensor", "value", *FLAG_COLUMNS} <= set(
        cols.kwargs["column_set"]
    )
    ranges = {s.sensor: s for s in specs if s.type == "expect_column_values_to_be_between"}
    assert set(ranges) == {m.name for m in c.measurements}
    temp = ranges["spindle_temp"]
    assert temp.kwargs["column"] == "value"
    assert (temp.kwargs["min_value"], temp.kwargs["max_value"]) == (-20, 150)
    assert temp.kwargs["mostly"] == pytest.approx(0.97)
    assert temp.kwargs["row_condition"] == 'sensor=="spindle_temp"'
    assert "properties[2] (spindle_temp).logicalTypeOptions" in temp.source
    units = {s.sensor: s.kwargs["value_set"] for s in specs if s.kwargs.get("column") == "unit"}
    assert units == {m.name: [m.unit] for m in c.measurements}
    rows = next(s for s in specs if s.type == "expect_table_row_count_to_be_between")
    assert rows.kwargs == {"min_value": 0, "strict_min": True}
    dup = next(s for s in specs if s.type == "expect_compound_columns_to_be_unique")
    assert dup.kwargs == {
        "column_list": ["entity", "time", "sensor"],
        "mostly": pytest.approx(0.95),
    }
    regex = next(s for s in specs if s.type == "expect_column_values_to_match_regex")
    assert regex.kwargs == {"column": "entity", "regex": "^BSW-M[0-9]{2}$"}


def test_derive_suite_for_integer_entity_and_time(contracts: dict[str, Contract]) -> None:
    specs = derive_suite(contracts[CMAPSS])
    on_entity = [s for s in specs if s.kwargs.get("column") == "entity"]
    assert [s.type for s in on_entity] == ["expect_column_values_to_not_be_null"]
    time_range = next(
        s
        for s in specs
        if s.kwargs.get("column") == "time" and s.type == "expect_column_values_to_be_between"
    )
    assert time_range.kwargs["min_value"] == 1
    not_null = [
        s for s in specs if s.type == "expect_column_values_to_not_be_null" and s.sensor == "s3"
    ]
    assert len(not_null) == 1 and not_null[0].kwargs["mostly"] == 1.0
    dup = next(s for s in specs if s.type == "expect_compound_columns_to_be_unique")
    assert dup.kwargs["mostly"] == 1.0  # duplicateValues mustBe 0


def test_row_count_operators_and_custom_rules(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    temp = c.column("spindle_temp")
    custom_on_sensor = {
        "type": "custom",
        "engine": "great-expectations",
        "implementation": {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"min_value": 10, "max_value": 90},
        },
    }
    custom_on_table = {
        "type": "custom",
        "engine": "great-expectations",
        "implementation": {
            "type": "expect_column_values_to_not_be_null",
            "kwargs": {"column": "raw_value"},
        },
    }
    changed = dataclasses.replace(
        c,
        columns=tuple(
            dataclasses.replace(col, quality=(*col.quality, custom_on_sensor))
            if col is temp
            else col
            for col in c.columns
        ),
        quality=(
            {"metric": "rowCount", "mustBeBetween": [10, 1000]},
            {"metric": "rowCount", "mustBeLessThan": 5000},
            custom_on_table,
        ),
    )
    specs = derive_suite(changed)
    counts = [s.kwargs for s in specs if s.type == "expect_table_row_count_to_be_between"]
    assert counts == [{"min_value": 10, "max_value": 1000}, {"max_value": 5000, "strict_max": True}]
    [mean] = [s for s in specs if s.type == "expect_column_mean_to_be_between"]
    assert mean.sensor == "spindle_temp" and mean.kwargs["column"] == "value"
    assert mean.kwargs["row_condition"] == 'sensor=="spindle_temp"'
    assert "quality[1] (custom)" in mean.source
    [raw] = [s for s in specs if s.kwargs.get("column") == "raw_value"]
    assert raw.source == "schema[0].quality[2] (custom)" and raw.sensor is None


def test_personal_attribute_expects_pseudonyms(contracts: dict[str, Contract]) -> None:
    on_badge = [
        s for s in derive_suite(contracts[LYON]) if s.kwargs.get("column") == "operator_badge"
    ]
    assert [s.kwargs.get("regex") for s in on_badge] == [PSEUDONYM_REGEX]
    assert "personal" in on_badge[0].source


def test_handwritten_suite_is_read_and_malformed_one_is_refused(
    contracts: dict[str, Contract], tmp_path: Path
) -> None:
    c = contracts[BAVARIA]
    assert load_handwritten(c, tmp_path) == []  # no file: nothing to add
    path = tmp_path / f"{c.slug}.json"
    path.write_text(
        json.dumps(
            [
                {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "raw_value"}},
                {"type": "expect_column_max_to_be_between", "kwargs": {"column": "value"}},
                {"kwargs": {"column": "value"}},
            ]
        )
    )
    with pytest.raises(ValueError, match=r"entry 2") as err:
        load_handwritten(c, tmp_path)
    assert str(path) in str(err.value)
    path.write_text("[{not json")
    with pytest.raises(ValueError, match=str(path.name)):
        load_handwritten(c, tmp_path)
    path.write_text(json.dumps({"type": "expect_column_values_to_not_be_null"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_handwritten(c, tmp_path)


def test_module_imports_without_gx() -> None:
    code = "import sys, datalab.quality.validate; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------
# running GX


def test_clean_frame_passes_and_builds_data_docs(
    contracts: dict[str, Contract], lab_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")  # Data Docs are GX's (the fast path does not build them)
    c = contracts[BAVARIA]
    report = validate(c, curated(c, ["BSW-M01", "BSW-M02"]), run_name="d-clean")
    assert report.success, report.summary()
    assert report.suite == c.slug
    assert report.evaluated == len(derive_suite(c)) == report.successful
    assert report.failed == 0 and report.rows == 4 * 2 * N
    # Data Docs: the real index, under the lab's GX root, listing the suite and the run
    assert report.docs_path is not None
    index = Path(report.docs_path)
    assert index.is_file() and index.is_absolute()
    assert index == settings().data_docs / "index.html"
    html = index.read_text()
    assert c.slug in html and "d-clean" in html
    # the report is written as JSON next to the other validation reports
    saved = json.loads((lab_home / "validation" / "d-clean.json").read_text())
    assert saved["success"] is True and saved["suite"] == c.slug
    assert json.loads(json.dumps(report.to_dict())) == saved


def test_out_of_range_sensor_fails_with_count_and_samples(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    df = spoil(curated(c, ["BSW-M01", "BSW-M02"]), "spindle_temp", 10, 500.0)  # 10 %
    report = validate(c, df, run_name="d-hot", build_docs=False)
    assert not report.success
    [bad] = failed_for(report, "expect_column_values_to_be_between")
    assert bad.sensor == "spindle_temp" and bad.column == "value"
    assert bad.unexpected_count == 2 * N // 10
    assert bad.unexpected_percent == pytest.approx(10.0)
    assert bad.element_count == 2 * N
    assert bad.mostly == pytest.approx(0.97)
    assert 1 <= len(bad.sample_values) <= 5
    assert all(v >= 500.0 for v in bad.sample_values)
    assert "spindle_temp" in bad.message and "10.00%" in bad.message
    assert "spindle_temp" in bad.source
    assert report.failed == 1  # only that sensor's range: the other sensors are fine


def test_out_of_range_within_tolerance_passes(
    contracts: dict[str, Contract], tmp_path: Path
) -> None:
    c = contracts[BAVARIA]
    df = spoil(curated(c, ["BSW-M01", "BSW-M02"]), "vibration", 50, 900.0)  # 2 % < 3 %
    df.write_parquet(tmp_path / "curated.parquet")  # a curated table on disk works too
    report = validate(c, tmp_path / "curated.parquet", run_name="d-warm", build_docs=False)
    assert report.success, report.summary()
    [r] = [
        r
        for r in report.results
        if r.type == "expect_column_values_to_be_between" and r.sensor == "vibration"
    ]
    assert r.unexpected_count == 2 * N // 50 and r.success


def test_duplicate_keys_beyond_rule_fail(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    df = curated(c, ["BSW-M01", "BSW-M02"])
    dups = df.head(200).with_columns(pl.lit(True).alias("flag_key_duplicate"))  # 200 of 1800 rows
    report = validate(c, pl.concat([df, dups]), run_name="d-dups", build_docs=False)
    [bad] = failed_for(report, "expect_compound_columns_to_be_unique")
    assert bad.column == "entity, time, sensor"
    assert bad.unexpected_count == 400  # GX counts every row of a repeated key
    assert set(bad.sample_values[0]) == {"entity", "time", "sensor"}
    assert bad.sample_values[0]["time"].startswith("2024-03-01T00:00:00")


def test_unknown_sensor_fails(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    df = curated(c, ["BSW-M01"])
    stray = df.head(3).with_columns(pl.lit("coolant_level").alias("sensor"))
    report = validate(c, pl.concat([df, stray]), run_name="d-stray", build_docs=False)
    [bad] = [r for r in report.failed_results() if r.column == "sensor"]
    assert bad.unexpected_count == 3 and bad.sample_values == ("coolant_level",)


def test_personal_attribute_in_clear_fails(contracts: dict[str, Contract]) -> None:
    c = contracts[LYON]
    clear = curated(c, ["LP-A1"], attributes={"operator_badge": "B12345"})
    report = validate(c, clear, run_name="d-clear", build_docs=False)
    [bad] = report.failed_results()
    assert bad.column == "operator_badge" and bad.sample_values == ("B12345",)
    pseudo = curated(c, ["LP-A1"], attributes={"operator_badge": "ps_0123456789abcdef"})
    assert validate(c, pseudo, run_name="d-pseudo", build_docs=False).success


def test_integer_time_contract_flags_only_the_missing_readings(
    contracts: dict[str, Contract],
) -> None:
    # One run (C-MAPSS has 24 sensors, about 80 expectations): the exact set of
    # failures shows that everything else in the clean frame passes.
    c = contracts[CMAPSS]
    df = curated(c, ["1", "2"], n=20)
    assert df.schema["time"] == pl.Int64
    nulls = df.with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(None).otherwise(pl.col("value")).alias("value")
    )
    report = validate(c, nulls, run_name="d-cmapss-nulls", build_docs=False)
    failed = {(r.sensor, r.source.split(" ")[0]) for r in report.failed_results()}
    # setting1 is required (nullValues mustBe 0 on the table as well)
    assert failed == {("setting1", "schema[0].properties[2]"), (None, "schema[0].quality[1]")}
    assert all(r.unexpected_count == 5 for r in report.failed_results())
    assert report.evaluated == len(derive_suite(c)) and report.rows == 24 * 2 * 20


def test_two_runs_in_a_row_and_handwritten_suite(
    contracts: dict[str, Contract], tmp_path: Path, lab_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")  # Data Docs are GX's (the fast path does not build them)
    c = contracts[BAVARIA]
    df = curated(c, ["BSW-M01"], n=50)
    first = validate(c, df, run_name="d-one")
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / f"{c.slug}.json").write_text(
        json.dumps(
            [
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {
                        "column": "value",
                        "max_value": 100,
                        "row_condition": 'sensor=="spindle_temp"',
                        "condition_parser": "pandas",
                    },
                },
                {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "raw_unit"}},
            ]
        )
    )
    second = validate(c, df, run_name="d-two", suites_dir=suites)
    assert first.success and first.evaluated == len(derive_suite(c))
    assert second.evaluated == first.evaluated + 2
    added = second.results[-2:]
    assert [r.source for r in added] == [
        f"{suites / (c.slug + '.json')}[0]",
        f"{suites / (c.slug + '.json')}[1]",
    ]
    # the hand-written range is tighter than the contract's: it fails and names the sensor
    assert added[0].sensor == "spindle_temp" and not added[0].success
    assert added[1].success
    html = Path(second.docs_path).read_text()
    assert "d-one" in html and "d-two" in html
    assert {p.name for p in (lab_home / "validation").iterdir()} == {"d-one.json", "d-two.json"}


def test_missing_column_and_bad_run_name(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    df = curated(c, ["BSW-M01"], n=20).drop("raw_unit")
    report = validate(c, df.lazy(), run_name="d-nocol", build_docs=False)
    [bad] = report.failed_results()
    assert bad.type == "expect_table_columns_to_match_set"
    assert "raw_unit" in bad.message
    with pytest.raises(ValueError, match="run name"):
        validate(c, df, run_name="../escape", build_docs=False)
