"""Chunked validation gives the same verdicts and counts as validating the whole table."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from datalab.config import settings
from datalab.intake import landing
from datalab.quality import validate, validate_chunks
from datalab.quality.results import ExpectationResult
from datalab.timeseries import curate, sample
from tests.conftest import PRESS, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _gx_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about GX's chunked runs: the fast path (datalab.quality.fast) would take the suites."""
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")


COMPARED = ("type", "column", "sensor", "success", "unexpected_count", "element_count", "missing_count", "observed_value")


def _curated(c, tmp: Path, defects: sample.Defects | None, seed: int) -> Path:
    gen = sample.generate(c, 16_000, seed=seed, start=START, **({"defects": defects} if defects else {}))
    rec = landing.push(c, [sample.write(gen, tmp / f"{c.slug}-{seed}.csv")])
    assert rec.accepted, rec.reasons
    curate.curate_delivery(c, rec.delivery_id)
    return curate.curated_path(c, rec.delivery_id, settings())


@pytest.mark.parametrize(("cid", "defects"), [
    (SPINDLE, None),  # passes
    (SPINDLE, sample.Defects(spikes=0.05, missing=0.03, key_duplicates=0.02)),  # fails several rules
    (PRESS, sample.Defects(key_duplicates=0.03)),  # compound uniqueness and pseudonym regex
])
def test_chunked_equals_whole(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch, cid, defects) -> None:
    c = contracts[cid]
    path = _curated(c, tmp_path, defects, seed=3)
    whole = validate.validate(c, path, run_name="whole", build_docs=False)
    assert not any("chunks" in n for n in whole.notes)
    monkeypatch.setenv("DATALAB_VALIDATE_CHUNK_ROWS", "3000")
    chunked = validate.validate(c, path, run_name="chunked", build_docs=False)
    assert any("chunks" in n for n in chunked.notes), chunked.notes
    assert chunked.rows == whole.rows
    assert chunked.success == whole.success
    assert len(chunked.results) == len(whole.results)
    for a, b in zip(whole.results, chunked.results, strict=True):
        assert {k: getattr(a, k) for k in COMPARED} == {k: getattr(b, k) for k in COMPARED}, a.message
        if a.unexpected_percent is not None:
            assert b.unexpected_percent == pytest.approx(a.unexpected_percent)
        # Chunks run on narrowed batches with GX's BASIC format: the samples
        # must still come back, and only values the whole run also found bad.
        assert bool(a.sample_values) == bool(b.sample_values), a.message
    if defects is not None and cid == SPINDLE:
        assert not whole.success and chunked.failed == whole.failed > 0


def test_merge_applies_mostly_to_totals() -> None:
    base = ExpectationResult(type="expect_column_values_to_be_between", column="value", sensor=None, source="test",
                             success=True, kwargs={"mostly": 0.9}, index=0, missing_count=0)
    # 8 % and 12 % unexpected in the two chunks: 10 % overall meets mostly=0.9 exactly
    a = replace(base, success=True, element_count=100, unexpected_count=8, sample_values=(1,))
    b = replace(base, success=False, element_count=100, unexpected_count=12, sample_values=(2,))
    (m,) = validate_chunks.merge([[a], [b]])
    assert m.success and m.unexpected_count == 20 and m.element_count == 200
    assert m.unexpected_percent == pytest.approx(10.0) and m.sample_values == (1, 2)
    c = replace(b, unexpected_count=13)
    (m,) = validate_chunks.merge([[a], [c]])
    assert not m.success
    rc = replace(base, type="expect_table_row_count_to_be_between", column=None, kwargs={"min_value": 150},
                 success=False, observed_value=100)
    (m,) = validate_chunks.merge([[rc], [rc]])
    assert m.success and m.observed_value == 200


def test_unmergeable_expectations_run_unchunked() -> None:
    assert not validate_chunks.mergeable("expect_column_mean_to_be_between", {"column": "value"})
    assert not validate_chunks.mergeable("expect_compound_columns_to_be_unique", {"column_list": ["entity", "time"]})
    assert validate_chunks.mergeable("expect_compound_columns_to_be_unique", {"column_list": ["entity", "time", "sensor"]})


def test_sensor_missing_from_the_data_gives_the_whole_table_verdict(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Expectations of a sensor no chunk holds run as written (in the first chunk): same results as unchunked."""
    c = contracts[SPINDLE]
    full = _curated(c, tmp_path, None, seed=4)
    gone = c.measurements[0].name
    path = tmp_path / "without.parquet"
    pl.read_parquet(full).filter(pl.col("sensor") != gone).write_parquet(path)
    whole = validate.validate(c, path, run_name="whole-missing", build_docs=False)
    monkeypatch.setenv("DATALAB_VALIDATE_CHUNK_ROWS", "3000")
    chunked = validate.validate(c, path, run_name="chunked-missing", build_docs=False)
    assert any("chunks" in n for n in chunked.notes)
    assert [r.sensor for r in chunked.results].count(gone) >= 1
    for a, b in zip(whole.results, chunked.results, strict=True):
        assert {k: getattr(a, k) for k in COMPARED} == {k: getattr(b, k) for k in COMPARED}, a.message
    assert chunked.success == whole.success and chunked.rows == whole.rows


def test_chunk_runs_its_own_sensor_without_the_condition() -> None:
    cond = {"row_condition": 'sensor=="temp"', "condition_parser": "pandas"}
    kws = [{"column": "entity"}, {"column": "value", **cond}, {"column": "value", "row_condition": 'sensor=="p"'},
           {"column": "value", "row_condition": 'entity=="M1"'}, {"column": "value", "row_condition": 'sensor=="ghost"'}]
    sensors = {"temp", "p"}
    ch = validate_chunks.Chunk(pl.lit(True), "temp")
    assert validate_chunks.chunk_suite(kws, ch, sensors, first=False) == [
        (0, {"column": "entity"}), (1, {"column": "value"}), (3, {"column": "value", "row_condition": 'entity=="M1"'})]
    first = validate_chunks.chunk_suite(kws, ch, sensors, first=True)
    assert (4, kws[4]) in first and all(i != 2 for i, _ in first)


def test_regex_on_text_column_counts_every_bad_row(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entity pattern is checked on pandas' Arrow strings, not categoricals; the count must stay exact."""
    from great_expectations.execution_engine import pandas_execution_engine

    c = contracts[SPINDLE]
    path = _curated(c, tmp_path, None, seed=5)
    df = pl.read_parquet(path).with_row_index("_i")
    bad = (pl.col("_i") % 97 == 0)
    df.with_columns(entity=pl.when(bad).then(pl.lit("bsw-m1")).otherwise(pl.col("entity"))).drop("_i").write_parquet(path)
    expected = df.filter(bad).height
    assert expected > 100
    monkeypatch.setenv("DATALAB_VALIDATE_CHUNK_ROWS", "3000")
    threshold = pandas_execution_engine.HASH_THRESHOLD
    rep = validate.validate(c, path, run_name="regex", build_docs=False)
    assert any("chunks" in n for n in rep.notes)
    regex = next(r for r in rep.results if r.type == "expect_column_values_to_match_regex")
    assert not regex.success and regex.unexpected_count == expected, regex.message
    # The batch fingerprint is skipped only inside the chunk loop.
    assert pandas_execution_engine.HASH_THRESHOLD == threshold > 0


def test_text_columns_become_categoricals_except_those_a_regex_checks() -> None:
    frame = pl.DataFrame({"entity": ["a", "b"], "sensor": ["s", "s"], "value": [1.0, 2.0]})
    specs = [validate.ExpectationSpec("expect_column_values_to_match_regex", {"column": "entity", "regex": "^[ab]$"}, "test")]
    df = validate._to_pandas(frame, validate._regex_columns(specs))
    assert str(df["sensor"].dtype) == "category"
    assert str(df["entity"].dtype) != "category" and list(df["entity"]) == ["a", "b"]
    assert df["entity"].astype(str).str.contains("^[ab]$").all()


def test_chunk_batch_holds_only_the_columns_its_expectations_read() -> None:
    cols = ["delivery_id", "entity", "time", "sensor", "value", "unit", "flag_missing"]
    read = validate_chunks.columns_read
    assert read([{"column": "value"}, {"column_list": ["entity", "time", "sensor"]}], cols) == ["entity", "time", "sensor", "value"]
    assert read([{"column": "unit", "row_condition": 'sensor=="temp"'}], cols) == ["sensor", "unit"]
    assert read([{"column_A": "value", "column_B": "unit"}], cols) == ["value", "unit"]
    # a condition the lab does not write may read any column; a missing
    # column is left for GX to report; a row count keeps one column (the rows)
    assert read([{"column": "value", "row_condition": 'entity=="M1"'}], cols) == cols
    assert read([{"column": "ghost"}], cols) == cols
    assert read([{"min_value": 1}], cols) == ["delivery_id"]


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet) from the repository root; its stdout."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_gx_imports_in_the_background_and_validation_waits_for_it() -> None:
    code = ("import sys, threading\n"
            "from datalab.quality import validate\n"
            "assert 'great_expectations' not in sys.modules\n"
            "validate.import_in_background()\n"
            "assert any(t.name == 'datalab-gx-import' for t in threading.enumerate())\n"
            "gx = validate._import_gx()\n"
            "import os\n"
            "print(gx.__version__, os.environ['GX_ANALYTICS_ENABLED'])\n")
    assert _fresh_python(code).split()[1] == "False"


@pytest.mark.parametrize("how", ["background", "direct"])
def test_gx_loads_without_scipy_stats_until_something_uses_it(how: str) -> None:
    """scipy.stats is a lazy module after GX's import (either way in): loaded, and right, on first use."""
    code = ("import sys\n"
            "from datalab.quality import validate\n"
            + ("validate.import_in_background()\n" if how == "background" else "")
            + "validate._import_gx()\n"
            "import great_expectations.expectations.core.expect_column_kl_divergence_to_be_less_than as kl\n"
            "assert type(sys.modules['scipy.stats']).__name__ == '_LazyModule', type(sys.modules['scipy.stats'])\n"
            "from scipy import stats\n"
            "assert kl.stats is stats and abs(stats.norm.cdf(1.0) - 0.8413447460685429) < 1e-12\n"
            "assert type(sys.modules['scipy.stats']).__name__ == 'module'\n"
            "print('ok')\n")
    assert _fresh_python(code).strip() == "ok"
