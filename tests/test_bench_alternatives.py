"""The benchmark's alternatives do the same work as datalab, so their timings compare.

On one generated delivery with every defect, each alternative (plain
Polars, DuckDB SQL, pandas + GX) must produce datalab's curated table: the
same rows, the same converted values and the same flags, row for row; its
checks must be the suite datalab derives from the contract, and fail where
datalab's would. ``benchmarks/run_all.py`` must run as one command.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from alternatives import spindle_spec as spec  # noqa: E402

SPINDLE = spec.CONTRACT_ID
ALTERNATIVES = ("polars_plain", "duckdb_sql", "pandas_gx")
ROW_KEY = ["entity", "time", "sensor", "raw_value", "raw_unit"]  # unique once exact duplicates are gone
COMPARED = ("flag_missing", "flag_unit_unknown", "flag_out_of_range", "flag_key_duplicate", "flag_outlier",
            "flag_gap_before")


def _with_outliers(frame: pl.DataFrame) -> pl.DataFrame:
    """Every 401st unique reading in its canonical unit set to 98 % of its maximum.

    The generator's spikes are out of range, so its data has no in-range
    robust outliers; these are (8 MAD-units above the median of every
    series) and leave the duplicate counts as they were.
    """
    from alternatives.polars_plain import _utc

    hi = pl.DataFrame([(s, u, h) for s, (u, _, h) in spec.SENSORS.items()], schema=["sensor", "canon", "hi"], orient="row")
    lone = pl.len().over("machine_id", "sensor", _utc(pl.col("ts"))) == 1
    pick = (pl.col("i") % 401 == 0) & lone & (pl.col("unit") == pl.col("canon")) & pl.col("value").is_not_null()
    return (frame.with_row_index("i").join(hi, on="sensor", how="left", maintain_order="left")
            .with_columns(value=pl.when(pick).then(0.98 * pl.col("hi")).otherwise(pl.col("value")))
            .select(frame.columns))


@pytest.fixture(scope="module")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20 k generated readings, curated by datalab (push, ingest, curate)."""
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.timeseries import curate, ingest, sample

    tmp = tmp_path_factory.mktemp("bench")
    c = contract.load_all(ROOT / "data_contracts")[SPINDLE]
    gen = sample.generate(c, 20_000, seed=7)
    path = sample.write(_with_outliers(gen.frame), tmp / "delivery.csv")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATALAB_HOME", str(tmp / "lab"))
        mp.setenv("DATALAB_CONTRACTS", str(ROOT / "data_contracts"))
        mp.setenv("DATALAB_ENGINE", "cpu")
        mp.delenv("DATALAB_CATALOG_URL", raising=False)
        from datalab.config import settings

        rec = landing.push(c, [path])
        assert rec.accepted, rec.reasons
        ingest.ingest_raw(c, rec.delivery_id)
        stats = curate.curate_delivery(c, rec.delivery_id)
        curated = pl.read_parquet(curate.curated_path(c, rec.delivery_id, settings()))
    return {"contract": c, "path": path, "truth": gen.truth, "stats": stats, "curated": curated, "tmp": tmp}


@pytest.fixture(scope="module")
def runs(delivery: dict) -> dict[str, dict]:
    out = {}
    for name in ALTERNATIVES:
        mod = importlib.import_module(f"alternatives.{name}")
        out[name] = mod.run(delivery["path"], delivery["tmp"] / f"{name}.parquet")
    return out


def test_the_delivery_has_every_defect_the_comparison_needs(delivery: dict) -> None:
    st = delivery["stats"]
    assert st.exact_duplicates_removed > 0 and st.values_converted > 0
    for flag in ("flag_missing", "flag_out_of_range", "flag_key_duplicate", "flag_outlier", "flag_gap_before"):
        assert st.flags[flag] > 0, flag
    assert delivery["truth"]["tz_shifted"] > 0  # naive local and offset timestamps are in the file


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_counts_agree_with_datalab(runs: dict, delivery: dict, name: str) -> None:
    r, st = runs[name], delivery["stats"]
    assert r["rows_in"] == st.rows_in
    assert r["rows_out"] == st.rows_out
    assert r["exact_duplicates_removed"] == st.exact_duplicates_removed == delivery["truth"]["exact_duplicates"]
    assert r["values_converted"] == st.values_converted == delivery["truth"]["wrong_unit"]
    for flag in (*COMPARED, "flag_late"):
        assert r["flags"][flag] == st.flags[flag], flag


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_output_is_datalabs_curated_table_row_for_row(runs: dict, delivery: dict, name: str) -> None:
    mine = pl.read_parquet(runs[name]["output"]).select(spec.CURATED_COLUMNS)
    ref = delivery["curated"].select(spec.CURATED_COLUMNS)
    assert mine.height == ref.height
    assert mine.schema["time"] == pl.Datetime("us", "UTC"), mine.schema["time"]
    both = ref.join(mine, on=ROW_KEY, how="full", nulls_equal=True, suffix="_alt")
    assert both.filter(pl.col("entity").is_null() | pl.col("entity_alt").is_null()).height == 0, "rows differ"
    for flag in COMPARED:
        bad = both.filter(pl.col(flag) != pl.col(f"{flag}_alt"))
        assert bad.height == 0, f"{flag} differs on {bad.height} rows, e.g. {bad.head(3).to_dicts()}"
    assert (both["unit"] == both["unit_alt"]).all()
    v, w = both["value"], both["value_alt"]
    assert (v.is_null() == w.is_null()).all()
    assert ((v - w).abs() <= 1e-9 * v.abs().clip(lower_bound=1.0)).fill_null(True).all()


def test_checks_are_the_suite_datalab_derives(runs: dict, delivery: dict) -> None:
    from datalab.timeseries.suite import derive_suite

    derived = derive_suite(delivery["contract"])
    for name, r in runs.items():
        assert r["validation"]["expectations"] == len(derived), name
        assert r["validation"]["success"], (name, r["validation"]["failed"])
    gx_types = sorted(c["name"].split("(")[0] for c in runs["pandas_gx"]["validation"]["checks"])
    assert gx_types == sorted(s.type for s in derived)


def test_checks_fail_where_the_contract_is_broken(delivery: dict, tmp_path: Path) -> None:
    """10 % spikes break the < 3 % out-of-range rule of every sensor."""
    from datalab.timeseries import sample

    c = delivery["contract"]
    gen = sample.generate(c, 4_000, seed=3, defects=sample.Defects(spikes=0.1))
    path = sample.write(gen, tmp_path / "bad.csv")
    for name in ALTERNATIVES:
        r = importlib.import_module(f"alternatives.{name}").run(path, tmp_path / f"{name}.parquet")
        assert not r["validation"]["success"], name
        failed = r["validation"]["failed"]
        assert len(failed) == len(spec.SENSORS), (name, failed)  # one range check per sensor, nothing else
        assert r["flags"]["flag_out_of_range"] == gen.truth["spikes"], name


def test_run_all_is_one_command(tmp_path: Path) -> None:
    """A tiny size through the real runner: subprocess per tool, table, JSON and PNG."""
    pytest.importorskip("matplotlib")
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--rows", "3000", "--only", "polars", "duckdb",
         "datalab-gpu", "io_floor", "--results", str(tmp_path), "--rounds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "plain Polars script" in p.stdout and "DuckDB SQL" in p.stdout
    report = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    res = report["sizes"][0]["results"]
    assert res["polars"]["rows_out"] == res["duckdb"]["rows_out"] > 0
    assert res["polars"]["peak_rss_mb"] > 0 and set(res["duckdb"]["stages"]) == {"curate", "validate"}
    if not report["gpu"]["usable"]:
        assert "not available" in res["datalab-gpu"]["not_available"]
        assert "not available" in p.stdout
    assert next(tmp_path.glob("bench-*.png")).stat().st_size > 10_000
    # two rounds: each tool ran twice (the second round in the other order), the table shows the median run
    rounds = report["sizes"][0]["rounds"]
    assert set(rounds) == {"polars", "duckdb", "io_floor"} and all(len(v) == 2 for v in rounds.values())
    # the I/O floor: the CSV's rows read and written, nothing compared with a curation
    assert res["io_floor"]["rows_out"] == report["sizes"][0]["lines"] and res["io_floor"]["floor"]
    floor = next(ln for ln in p.stdout.splitlines() if ln.startswith("I/O floor"))
    assert " n/a " in floor and "differs" not in p.stdout
    assert res["polars"]["seconds"] in [r["seconds"] for r in rounds["polars"]] and res["polars"]["rounds"] == 2
    assert "2 rounds, each in a rotated order" in p.stdout and "round 2 of 2" in p.stderr


def test_run_all_times_a_cold_and_a_warm_datalab_process(tmp_path: Path) -> None:
    """datalab and datalab-warm on one tiny delivery: the same curation, the warm-up measured apart and not timed."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--rows", "3000", "--only", "datalab", "datalab-warm",
         "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(next(tmp_path.glob("bench-*.json")).read_text())["sizes"][0]["results"]
    cold, warm = res["datalab"], res["datalab-warm"]
    assert warm["warm_up_s"] > 0 and "warm_up_s" not in cold
    assert {k: cold[k] for k in ("rows_out", "values_converted", "flags", "version")} == \
        {k: warm[k] for k in ("rows_out", "values_converted", "flags", "version")}
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("datalab, warm process (cpu)"))
    assert " yes " in line  # same counts as the cold run
    assert "datalab warm-up (not timed" in p.stderr


def test_rounds_give_the_median_run_and_datalabs_lead_round_by_round() -> None:
    """run_all --rounds: the median run per tool, and the ratio of each round's walls, median and range."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run_all

    def run(s: float) -> dict:
        return {"seconds": s, "rows_out": 1}

    size = {"rounds": {"datalab": [run(10.0), run(12.0), run(11.0)],
                       "duckdb": [run(16.0), run(15.0), {"tool": "duckdb", "error": "exit 1"}]}}
    assert run_all.median_run(size["rounds"]["datalab"])["seconds"] == 11.0
    assert run_all.median_run(size["rounds"]["duckdb"])["seconds"] == 15.0  # of the two that ran: the lower middle
    assert run_all.median_run([{"tool": "x", "error": "exit 1"}]) == {"tool": "x", "error": "exit 1"}
    assert run_all.round_ratios(size, "duckdb") == [1.6, 1.25]  # the third round has no DuckDB run
    lines = run_all.rounds_lines(size)
    assert lines[0].startswith("3 rounds")
    duck = next(ln for ln in lines if "DuckDB" in ln)
    assert "walls 16.00, 15.00, failed s" in duck and "datalab faster by 1.43x" in duck and "1.25-1.60x" in duck
    assert run_all.rounds_lines({"rounds": {"datalab": [run(1.0)]}}) == []
    # with a warm process too: each alternative's line gives both leads, the warm run's against the warm runs
    size["rounds"]["datalab-warm"] = [run(8.0), run(10.0), run(9.0)]
    assert run_all.round_ratios(size, "duckdb", "datalab-warm") == [2.0, 1.5]
    duck = next(ln for ln in run_all.rounds_lines(size) if "DuckDB" in ln)
    assert "datalab faster by 1.43x" in duck and "datalab warm faster by 1.75x (median of the rounds' ratios; 1.50-2.00x)" in duck
    size["rounds"]["io_floor"] = [run(4.0), run(5.0), run(4.5)]
    floor = next(ln for ln in run_all.rounds_lines(size) if "I/O floor" in ln)
    assert "datalab took 2.44x the floor (median of the rounds' ratios; 2.40-2.50x)" in floor
    assert "datalab warm took 2.00x the floor" in floor
    warm = next(ln for ln in run_all.rounds_lines(size) if "warm process" in ln)
    assert "walls 8.00, 10.00, 9.00 s" in warm and "faster" not in warm


def test_engine_benchmark_runs_both_engines_and_compares_them(tmp_path: Path) -> None:
    """benchmarks/engines.py (the GPU check's benchmark) runs here too: the GPU run falls back and says why."""
    out = tmp_path / "engines.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engines.py"), "--rows", "20000", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["same"].startswith("equal"), res["same"]
    cpu, gpu = res["results"]
    assert cpu["engine"]["engine"] == "cpu" and cpu["rows_out"] == gpu["rows_out"] > 0
    if gpu["engine"]["engine"] == "cpu":  # no usable GPU here: the fallback is recorded, with its reason
        assert gpu["engine"]["fallback"]
    assert "DATALAB_ENGINE=gpu" in p.stdout and "curated tables of the two runs: equal" in p.stdout


def test_the_end_to_end_benchmark_measures_its_own_checkout(tmp_path: Path) -> None:
    """benchmarks/e2e.py run from another tree imports that tree's datalab, not the environment's install.

    Old-against-new pairs run it from a second worktree that shares the first's
    .venv (an editable install of the first): without its own tree first on
    sys.path, both sides of a pair measured the same code.
    """
    tree = tmp_path / "other-tree"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "benchmarks" / "e2e.py").write_text((ROOT / "benchmarks" / "e2e.py").read_text())
    (tree / "datalab").mkdir()
    (tree / "datalab" / "__init__.py").write_text("raise SystemExit('datalab of the other tree')\n")
    p = subprocess.run([sys.executable, str(tree / "benchmarks" / "e2e.py"), "--worker", "datalab", "--file", str(tmp_path / "x.csv")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "datalab of the other tree" in p.stderr, (p.stdout[-1000:], p.stderr[-2000:])
