"""GX stays the reference: every derived expectation, evaluated by Polars (datalab.quality.fast) and by GX, gives the same result.

For each derived suite kind (sensor contracts from data_contracts/, the contract that states
every kind of rule, the CAD suite) and data with and without defects (generated deliveries run
through curation, hand-built frames, the real C-MAPSS file), the suite is validated by GX
(``DATALAB_VALIDATE_ENGINE=gx``) and every expectation the fast path takes is evaluated by it
on the same table; the two ``ExpectationResult`` records are compared field by field, messages
included. Only the mean (a float GX computes) is compared with a tolerance, although the fast
path sums as pandas does and matches it to the bit here.
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

from datalab.cad.features import SCHEMA as CAD_SCHEMA
from datalab.config import settings
from datalab.contracts.contract import Contract
from datalab.intake import landing
from datalab.kinds import kind_of
from datalab.quality import fast
from datalab.quality.expectations import ExpectationSpec
from datalab.quality.results import ExpectationResult
from datalab.quality.validate import ValidationReport, validate
from datalab.timeseries import curate, sample
from tests.conftest import CMAPSS, PRESS, PUMPS, SPINDLE
from tests.test_suite_snapshot import _every_rule
from tests.test_validate import curated, spoil

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
CAD = "urn:datalab:lyon-presses:tooling-cad"
FIELDS = [f.name for f in dataclasses.fields(ExpectationResult)]
# report keys that name the run rather than its results
RUN_KEYS = {"seconds", "notes", "engine", "docs_path", "report_path", "run_name"}
SEEN: set[str] = set()  # expectation types compared so far (the last test checks they cover the fast path)


def _gx(c: Contract, frame: pl.DataFrame | Path, monkeypatch: pytest.MonkeyPatch, run: str) -> ValidationReport:
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")
    try:
        return validate(c, frame, run_name=f"{run}-gx", build_docs=False)
    finally:
        monkeypatch.delenv("DATALAB_VALIDATE_ENGINE")


def parity(c: Contract, frame: pl.DataFrame | Path, monkeypatch: pytest.MonkeyPatch, run: str = "parity",
           unsupported: int = 0) -> tuple[list[ExpectationResult], list[ExpectationResult]]:
    """Run ``c``'s suite through GX and every expectation the fast path takes through it; compare them.

    ``unsupported``: how many expectations the fast path is expected to leave to GX.
    """
    specs: list[ExpectationSpec] = kind_of(c).suite(c)
    schema = fast.scan(frame).collect_schema()
    take = [i for i, sp in enumerate(specs) if not fast.unsupported([sp], schema)]
    assert len(specs) - len(take) == unsupported, fast.unsupported(specs, schema)
    gx = _gx(c, frame, monkeypatch, run)
    ours, rows = fast.evaluate(specs, frame, indexes=take)
    assert rows == gx.rows
    theirs = [gx.results[i] for i in take]
    for a, b in zip(theirs, ours, strict=True):
        assert a.index == b.index
        if a.type == "expect_column_mean_to_be_between" and a.observed_value is not None:
            assert b.observed_value == pytest.approx(a.observed_value, rel=1e-12, abs=1e-12), a.message
            a, b = dataclasses.replace(a, observed_value=None, message=""), dataclasses.replace(b, observed_value=None, message="")
        diff = {k: (getattr(a, k), getattr(b, k)) for k in FIELDS if getattr(a, k) != getattr(b, k)}
        assert not diff, f"{a.type} [{a.index}] {a.source}: GX vs fast {diff}"
        SEEN.add(a.type)
    return theirs, ours


def _delivery(c: Contract, tmp: Path, defects: sample.Defects | None, seed: int, rows: int = 16_000) -> Path:
    gen = sample.generate(c, rows, seed=seed, start=START, **({"defects": defects} if defects else {}))
    rec = landing.push(c, [sample.write(gen, tmp / f"{c.slug}-{seed}.csv")])
    assert rec.accepted, rec.reasons
    curate.curate_delivery(c, rec.delivery_id)
    return curate.curated_path(c, rec.delivery_id, settings())


# --------------------------------------------------------------------------
# generated deliveries, through the lab's own curation


@pytest.mark.parametrize(("cid", "defects"), [
    (SPINDLE, None),
    (SPINDLE, sample.Defects(spikes=0.05, missing=0.03, key_duplicates=0.02)),
    (PRESS, sample.Defects(key_duplicates=0.03, missing=0.02)),
    (PUMPS, sample.Defects(spikes=0.1, wrong_unit=0.05, key_duplicates=0.06)),
])
def test_generated_deliveries(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch, cid, defects) -> None:
    c = contracts[cid]
    path = _delivery(c, tmp_path, defects, seed=7)
    theirs, _ = parity(c, path, monkeypatch)
    if defects is not None and cid != PRESS:
        assert any(not r.success for r in theirs)  # the failure path is compared too


def test_hand_built_defects(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of range, NaN and nulls, repeated keys, unknown sensors, clear personal values, wrong units."""
    c = contracts[SPINDLE]
    df = spoil(curated(c, ["BSW-M01", "BSW-M02", "bsw-m3"]), "spindle_temp", 7, 500.0)
    i = pl.int_range(pl.len())
    df = df.with_columns(
        value=pl.when(i % 53 == 0).then(None).when(i % 61 == 0).then(float("nan")).otherwise(pl.col("value")),
        unit=pl.when(i % 89 == 0).then(pl.lit("degF")).otherwise(pl.col("unit")),
        entity=pl.when(i % 97 == 0).then(None).otherwise(pl.col("entity")),
    )
    stray = df.head(30).with_columns(sensor=pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("coolant")).otherwise(None))
    parity(c, pl.concat([df, df.head(300), stray]), monkeypatch, "spindle-hand")
    p = contracts[PRESS]
    clear = curated(p, ["LP-A1", "LP-B2"], n=50, attributes={"operator_badge": "B12345"})
    parity(p, clear, monkeypatch, "press-clear")


def test_wrong_columns(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = contracts[SPINDLE]
    df = curated(c, ["BSW-M01"], n=40).drop("raw_unit").with_columns(pl.lit(1).alias("stray"))
    theirs, _ = parity(c, df, monkeypatch, "columns")
    [bad] = [r for r in theirs if not r.success]
    assert bad.type == "expect_table_columns_to_match_set" and bad.details == {
        "mismatched": {"unexpected": ["stray"], "missing": ["raw_unit"]}}


def test_an_empty_table_and_a_missing_sensor(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No rows (vacuous successes, no percent, no mean) and a sensor with no rows (its row conditions select none)."""
    c = _every_rule(contracts[SPINDLE])
    df = curated(c, ["BSW-M01"], n=10, attributes={"shift": "A", "load_pct": 5.0, "badge": "ps_0123456789abcdef"})
    parity(c, df.head(0), monkeypatch, "empty", unsupported=1)
    parity(c, df.filter(pl.col("sensor") != "vibration"), monkeypatch, "no-vibration", unsupported=1)


def test_every_rule_a_contract_can_state(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract with every rule: means, lengths, increasing time, strict bounds, row counts per sensor, attributes.

    The mean of the text attribute ``shift`` is an error in GX (it cannot average text): the fast
    path leaves it to GX, which is why validate() would run this suite in GX.
    """
    c = _every_rule(contracts[SPINDLE])
    df = curated(c, ["BSW-M01", "BSW-M02", "M-2"], n=30,
                 attributes={"shift": "A", "load_pct": 50.0, "badge": "ps_0123456789abcdef"})
    i = pl.int_range(pl.len())
    df = df.with_columns(
        shift=pl.when(i % 11 == 0).then(pl.lit("D")).when(i % 13 == 0).then(None).otherwise(pl.col("shift")),
        load_pct=pl.when(i % 17 == 0).then(140.0).otherwise(pl.col("load_pct")),
        badge=pl.when(i % 19 == 0).then(pl.lit("B7")).otherwise(pl.col("badge")),
        entity=pl.when(i % 23 == 0).then(pl.lit("")).otherwise(pl.col("entity")),
    )
    bounded = df.filter(pl.col("sensor") == "bounded")
    df = pl.concat([df, bounded.head(5).with_columns(value=pl.lit(5.0)), bounded.head(5).with_columns(value=pl.lit(0.0))])
    parity(c, df, monkeypatch, "every", unsupported=1)
    parity(c, curated(c, ["BSW-M01"], n=12, attributes={"shift": "B", "load_pct": 20.0, "badge": "ps_0123456789abcdef"}),
           monkeypatch, "every-clean", unsupported=1)


def _cad_frame(rows: int) -> pl.DataFrame:
    """A curated CAD table (datalab.cad.features.SCHEMA) of ``rows`` parts, every rule of the CAD suite broken somewhere."""
    i = list(range(rows))
    data: dict[str, list] = {name: [None] * rows for name in CAD_SCHEMA}
    fmt = ["step" if k % 3 else "stl" for k in i]
    data.update(
        delivery_id=["d-cad"] * rows, file_name=[f"part{k}.stp" for k in i],
        sha256=[f"{k:064x}" if k % 29 else "XYZ" for k in i], bytes=[0 if k % 31 == 0 else 1000 + k for k in i],
        format=[f if k % 37 else "iges" for k, f in zip(i, fmt, strict=True)],
        name_format=[None if k % 5 == 0 else ("step" if k % 41 else "stl") for k in i],
        length_unit=[None if k % 43 == 0 else ("furlong" if k % 47 == 0 else "mm") for k in i],
        canonical_unit=["mm" if k % 53 else "inch" for k in i],
        volume_mm3=[None if k % 4 == 0 else (-1.0 if k % 59 == 0 else 10.0 + k) for k in i],
        volume_to_bbox=[None if k % 4 == 0 else (1.5 if k % 61 == 0 else 0.5) for k in i],
        area_mm2=[float(k) - (5 if k % 67 == 0 else 0) for k in i],
        bbox_x_mm=[1.0] * rows, bbox_y_mm=[2.0] * rows, bbox_z_mm=[None if k % 71 == 0 else 3.0 for k in i],
        geometry_items=[0 if k % 73 == 0 else 12 for k in i],
        classification=["confidential" if k % 79 else "public" for k in i],
        export_control=[k % 83 == 0 for k in i],
    )
    return pl.DataFrame(data, schema=CAD_SCHEMA)


def test_cad_suite(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = contracts[CAD]
    theirs, _ = parity(c, _cad_frame(400), monkeypatch, "cad")
    assert sum(not r.success for r in theirs) >= 8
    clean = _cad_frame(400).filter(pl.int_range(pl.len()) % 3 == 1).head(5)
    parity(c, clean, monkeypatch, "cad-few")


def test_real_cmapss_file(lab: Path, realdata: Path, contracts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real C-MAPSS test file through the lab's curation (integer time), as curated and with defects added."""
    c = contracts[CMAPSS]
    rec = landing.push(c, [realdata / "cmapss/test_FD001.txt"])
    assert rec.accepted, rec.reasons
    curate.curate_delivery(c, rec.delivery_id)
    path = curate.curated_path(c, rec.delivery_id, settings())
    parity(c, path, monkeypatch, "cmapss")
    df = pl.read_parquet(path)
    i = pl.int_range(pl.len())
    spoilt = tmp_path / "spoilt.parquet"
    pl.concat([df.with_columns(value=pl.when(i % 101 == 0).then(None).otherwise(pl.col("value"))),
               df.head(500)]).write_parquet(spoilt)
    theirs, _ = parity(c, spoilt, monkeypatch, "cmapss-spoilt")
    assert any(not r.success for r in theirs)


# --------------------------------------------------------------------------
# the runner: which engine, and the same report


def test_validate_uses_the_fast_path_and_writes_the_same_report(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = contracts[SPINDLE]
    df = spoil(curated(c, ["BSW-M01", "BSW-M02"]), "spindle_temp", 10, 500.0)
    df = pl.concat([df, df.head(200)])
    ours = validate(c, df, run_name="fast-report", build_docs=True)
    theirs = _gx(c, df, monkeypatch, "fast-report")
    assert ours.engine == "polars" and theirs.engine == "great_expectations"
    assert ours.docs_path is None and "Data Docs are not rebuilt" in ours.notes[0]
    a, b = ours.to_dict(), theirs.to_dict()
    assert list(a) == list(b)
    assert {k: v for k, v in a.items() if k not in RUN_KEYS} == {k: v for k, v in b.items() if k not in RUN_KEYS}
    saved = json.loads((settings().validation / "fast-report.json").read_text())
    assert saved["engine"] == "polars" and saved["results"] == a["results"]


def _hand_written_both_ways(c: Contract, df: pl.DataFrame, hand: list[dict], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch, run: str) -> list[tuple[ExpectationResult, ExpectationResult]]:
    """The ``hand``-written suite validated by GX and by the fast path: (GX's, ours) for each of its expectations."""
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / f"{c.slug}.json").write_text(json.dumps(hand))
    ours = validate(c, df, run_name=f"{run}-fast", build_docs=False, suites_dir=suites)
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")
    theirs = validate(c, df, run_name=f"{run}-gx", build_docs=False, suites_dir=suites)
    assert ours.engine == "polars" and theirs.engine == "great_expectations"
    assert len(theirs.results) == len(ours.results)
    return list(zip(theirs.results, ours.results, strict=True))[-len(hand):]  # the hand-written come last


def test_conditioned_expectations_see_only_their_rows_as_gx_does(contracts, lab: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Expectations whose metrics depend on row order or on other rows (increasing, compound keys, column pairs),
    conditioned on one sensor: GX filters the rows first, and so does the fast path, once per condition."""
    c = contracts[SPINDLE]
    df = curated(c, ["BSW-M01", "BSW-M02"], n=40)
    i = pl.int_range(pl.len())
    # out of order and repeated keys inside one sensor's rows; the other sensors' rows interleave
    df = df.with_columns(time=pl.when((pl.col("sensor") == "vibration") & (i % 7 == 0)).then(pl.col("time").min())
                         .otherwise(pl.col("time")),
                         raw_unit=pl.when(i % 5 == 0).then(pl.lit("x")).otherwise(pl.col("unit")))
    df = pl.concat([df, df.filter(pl.col("sensor") == "vibration").head(3)])
    on = {"condition_parser": "pandas"}
    hand = [
        {"type": "expect_column_values_to_be_increasing", "kwargs": {"column": "time", "row_condition": 'sensor=="vibration"', **on}},
        {"type": "expect_column_values_to_be_increasing", "kwargs": {"column": "time", "row_condition": 'sensor=="nowhere"', **on}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["entity", "time"], "row_condition": 'sensor=="vibration"', **on}},
        {"type": "expect_column_pair_values_to_be_equal", "kwargs": {"column_A": "unit", "column_B": "raw_unit", "mostly": 0.5, "row_condition": 'sensor=="oil_pressure"', **on}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "value", "min_value": 0, "row_condition": 'sensor=="oil_pressure"', **on}},
    ]
    hand_results = _hand_written_both_ways(c, df, hand, tmp_path, monkeypatch, "cond")
    assert [a.type for a, _ in hand_results] == [h["type"] for h in hand]
    assert [a.success for a, _ in hand_results] == [False, True, False, True, True]
    for a, b in hand_results:
        if a.type == "expect_column_mean_to_be_between":
            assert b.observed_value == pytest.approx(a.observed_value, rel=1e-12)
            a, b = dataclasses.replace(a, observed_value=None, message=""), dataclasses.replace(b, observed_value=None, message="")
        diff = {k: (getattr(a, k), getattr(b, k)) for k in FIELDS if getattr(a, k) != getattr(b, k)}
        assert not diff, f"{a.type} [{a.index}]: GX vs fast {diff}"


def test_compound_keys_with_missing_values_match_gx_whichever_way_the_repeats_are_found(
        contracts, lab: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated keys are found by repeated times within a series (fast._repeated_keys), or as one struct
    where the key has no temporal or integer column: every ``ignore_row_if``, keys with missing entity,
    sensor or time, repeats of those, and a row condition, the same counts and samples as GX."""
    c = contracts[SPINDLE]
    df = curated(c, ["BSW-M01", "BSW-M02"], n=30)
    i = pl.int_range(pl.len())
    df = df.with_columns(entity=pl.when(i % 11 == 0).then(None).otherwise(pl.col("entity")),
                         time=pl.when(i % 13 == 0).then(None).otherwise(pl.col("time")),
                         sensor=pl.when(i % 17 == 0).then(None).otherwise(pl.col("sensor")))
    df = pl.concat([df, df.filter((i % 11 == 0) | (i % 13 == 0) | (i % 17 == 0)).head(12), df.slice(40, 5)])
    on = {"condition_parser": "pandas"}
    hand = [{"type": "expect_compound_columns_to_be_unique",
             "kwargs": {"column_list": cols, "ignore_row_if": how, "mostly": 0.5, **extra}}
            for cols in (["entity", "time", "sensor"], ["time", "entity"], ["entity", "sensor"])
            for how in ("all_values_are_missing", "any_value_is_missing", "never")
            for extra in ({}, {"row_condition": 'sensor=="vibration"', **on})]
    pairs = _hand_written_both_ways(c, df, hand, tmp_path, monkeypatch, "keys")
    assert any(not a.success for a, _ in pairs) and any(a.success for a, _ in pairs)
    for a, b in pairs:
        diff = {k: (getattr(a, k), getattr(b, k)) for k in FIELDS if getattr(a, k) != getattr(b, k)}
        assert not diff, f"{a.type} {a.kwargs}: GX vs fast {diff}"


def test_a_suite_with_an_expectation_only_gx_evaluates_falls_back_to_gx(contracts, lab: Path, tmp_path: Path) -> None:
    c = contracts[SPINDLE]
    df = curated(c, ["BSW-M01"], n=30)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / f"{c.slug}.json").write_text(json.dumps([
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "raw_unit"}}]))
    assert validate(c, df, run_name="hand-fast", build_docs=False, suites_dir=suites).engine == "polars"
    (suites / f"{c.slug}.json").write_text(json.dumps([
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "raw_unit"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "entity"}}]))
    rep = validate(c, df, run_name="hand-gx", build_docs=False, suites_dir=suites)
    assert rep.engine == "great_expectations"
    assert any("expect_column_values_to_be_unique" in n for n in rep.notes), rep.notes
    assert rep.results[-1].type == "expect_column_values_to_be_unique" and not rep.results[-1].success
    # a row condition the lab does not write, and an unknown keyword, go to GX too
    specs = [ExpectationSpec("expect_column_values_to_not_be_null", {"column": "value", "row_condition": 'value > 3',
                                                                    "condition_parser": "pandas"}, "t"),
             ExpectationSpec("expect_column_values_to_not_be_null", {"column": "value", "result_format": "COMPLETE"}, "t"),
             ExpectationSpec("expect_column_values_to_match_regex", {"column": "entity", "regex": r"^\w+$"}, "t"),
             ExpectationSpec("expect_column_values_to_be_between", {"column": "ghost", "min_value": 0}, "t")]
    reasons = fast.unsupported(specs, df.collect_schema())
    assert len(reasons) == 4 and all(r.startswith(f"[{i}]") for i, r in enumerate(reasons))
    with pytest.raises(fast.Unsupported):
        fast.evaluate(specs, df)


def test_forcing_gx_and_a_fast_run_imports_neither_pandas_nor_gx(contracts, lab: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = contracts[SPINDLE]
    path = tmp_path / "curated.parquet"
    curated(c, ["BSW-M01"], n=30).write_parquet(path)
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "gx")
    assert validate(c, path, run_name="forced", build_docs=False).engine == "great_expectations"
    monkeypatch.setenv("DATALAB_VALIDATE_ENGINE", "fast")
    code = ("import sys\n"
            "from datalab.contracts.contract import load_all\n"
            "from datalab.quality import validate\n"
            f"c = load_all({str(Path(__file__).resolve().parent.parent / 'data_contracts')!r})[{SPINDLE!r}]\n"
            "validate.import_in_background(c)\n"
            f"r = validate.validate(c, {str(path)!r}, run_name='fresh', build_docs=False)\n"
            "assert r.success and r.engine == 'polars', r.summary()\n"
            "print(sorted(m for m in ('great_expectations', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_regex_translation() -> None:
    assert fast.rust_regex("^BSW-M[0-9]{2}$") == r"^BSW-M[0-9]{2}(?:\n?\z)"
    assert fast.rust_regex(r"^\d+\.\d$") == r"^\d+\.\d(?:\n?\z)"
    for bad in (r"^\w+$", r"(?i)abc", r"a(?=b)", "[[:alpha:]]", "[a&&b]", r"\bx"):
        with pytest.raises(fast.Unsupported):
            fast.rust_regex(bad)


def test_the_comparisons_covered_every_type_the_fast_path_takes() -> None:
    """Runs last in this module: the parity tests above compared every supported expectation type at least once."""
    if not SEEN:
        pytest.skip("run with the parity tests of this module")
    assert fast.SUPPORTED <= SEEN, sorted(fast.SUPPORTED - SEEN)


@pytest.mark.parametrize("cid", [SPINDLE, PUMPS])
@pytest.mark.parametrize("chunk_rows", [3000, 500])
def test_a_large_file_is_validated_in_chunks_like_gx_chunks_it(lab: Path, tmp_path: Path, contracts,
                                                               monkeypatch: pytest.MonkeyPatch, cid, chunk_rows) -> None:
    """Past DATALAB_VALIDATE_CHUNK_ROWS the fast path runs per sensor chunk (bounded memory) and merges the
    chunks as the GX path merges its own: the same results as chunked GX, field for field, and the same
    verdicts and counts as one unchunked pass. At 500 rows a chunk, every series (about 1,300 rows) is
    also cut into time ranges, with the key duplicates inside them."""
    from datalab.quality import validate_chunks

    c = contracts[cid]
    path = _delivery(c, tmp_path, sample.Defects(spikes=0.05, missing=0.03, key_duplicates=0.04), seed=11)
    whole = validate(c, path, run_name="whole", build_docs=False)  # one chunk: the file is smaller than the default
    assert whole.engine == "polars" and not any("chunks" in n for n in whole.notes)
    plan = validate_chunks.plan_chunks(path, chunk_rows, by_time=True)
    df = pl.read_parquet(path)
    sizes = [df.filter(ch.filter).height for ch in plan]
    assert sum(sizes) == df.height  # every row in exactly one chunk
    longest = df.group_by("entity", "sensor").len()["len"].max()
    if chunk_rows < longest:  # series cut by time: no chunk holds a whole series any more
        assert max(sizes) < longest and len([n for n in sizes if n]) > df.select("entity", "sensor").n_unique()
    monkeypatch.setenv("DATALAB_VALIDATE_CHUNK_ROWS", str(chunk_rows))
    chunked = validate(c, path, run_name="chunked", build_docs=False)
    assert chunked.engine == "polars" and any("chunks" in n for n in chunked.notes), chunked.notes
    gx = _gx(c, path, monkeypatch, "chunked")
    assert any("chunks" in n for n in gx.notes)
    assert chunked.rows == gx.rows == whole.rows and chunked.success == gx.success == whole.success
    keys = ("type", "success", "unexpected_count", "element_count", "missing_count")
    for a, b, w in zip(gx.results, chunked.results, whole.results, strict=True):
        if a.type == "expect_column_mean_to_be_between" and a.observed_value is not None:
            assert b.observed_value == pytest.approx(a.observed_value, rel=1e-12, abs=1e-12)
            a, b = dataclasses.replace(a, observed_value=None, message=""), dataclasses.replace(b, observed_value=None, message="")
        diff = {k: (getattr(a, k), getattr(b, k)) for k in FIELDS if getattr(a, k) != getattr(b, k)}
        assert not diff, f"{a.type} [{a.index}] {a.source}: chunked GX vs chunked fast {diff}"
        assert {k: getattr(b, k) for k in keys} == {k: getattr(w, k) for k in keys}


def test_a_suite_is_planned_once_per_schema_and_again_when_either_changes(contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans are kept by the expectations' places, types and keywords and the table's schema, nothing else."""
    specs = kind_of(contracts[SPINDLE]).suite(contracts[SPINDLE])
    schema = pl.Schema({"entity": pl.String, "time": pl.Datetime("us", "UTC"), "sensor": pl.String,
                        "value": pl.Float64, "unit": pl.String})
    made: list[int] = []
    real = fast._plan

    def counted(i, spec, sch):
        made.append(i)
        return real(i, spec, sch)

    monkeypatch.setattr(fast, "_plan", counted)
    monkeypatch.setattr(fast, "_PLANNED", {})
    first, why = fast.plans(specs, schema)
    assert len(made) == len(specs)
    again, why_again = fast.plans(specs, schema)
    assert len(made) == len(specs), "the same suite on the same schema is not planned again"
    assert again.keys() == first.keys() and why_again == why
    assert all(again[i] is first[i] for i in first)
    # a changed bound, or a table without a column, is a new plan (and a new reason why not)
    i = next(k for k, sp in enumerate(specs) if sp.type == "expect_column_values_to_be_between")
    moved = [dataclasses.replace(sp, kwargs={**sp.kwargs, "max_value": 1e9}) if k == i else sp for k, sp in enumerate(specs)]
    fast.plans(moved, schema)
    assert len(made) == 2 * len(specs)
    narrow = pl.Schema({k: v for k, v in schema.items() if k != "unit"})
    _, why_narrow = fast.plans(specs, narrow)
    assert len(made) == 3 * len(specs)
    assert why_narrow and not why
    assert all("'unit'" in w and f"({specs[int(w[1:w.index(']')])].source})" in w for w in why_narrow), why_narrow
