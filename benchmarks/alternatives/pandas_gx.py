"""The spindle curation in pandas, validated with Great Expectations.

What a data engineer would write with the most common tools: ``read_csv``,
pandas operations for the curation (``drop_duplicates``, ``merge``,
``groupby().transform``), the contract's rules written by hand as a GX 1.x
expectation suite run on the in-memory frame, and ``to_parquet``. Same
rules as datalab (``spindle_spec``), same expectations as the suite datalab
derives from the contract.

    .venv/bin/python benchmarks/alternatives/pandas_gx.py delivery.csv out.parquet
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import spindle_spec as spec
else:
    from . import spindle_spec as spec


def _utc(ts: pd.Series) -> pd.Series:
    """ISO text with Z or an offset -> UTC; naive text -> local time in the contract's zone -> UTC."""
    aware = ts.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
    out = pd.Series(pd.NaT, index=ts.index, dtype="datetime64[us, UTC]")
    out[aware] = pd.to_datetime(ts[aware], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    if (~aware).any():
        local = pd.to_datetime(ts[~aware], format="ISO8601").dt.tz_localize(spec.TIMEZONE, ambiguous=True, nonexistent="NaT")
        out[~aware] = local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return out


def curate(path: Path) -> pd.DataFrame:
    """CSV -> curated long table (same columns and flags as datalab's curated table)."""
    raw = pd.read_csv(path, dtype={spec.ENTITY: str, spec.TIME: str, spec.SENSOR: str, spec.VALUE: float, spec.UNIT: str},
                      keep_default_na=False, na_values={spec.VALUE: [""]})
    df = pd.DataFrame({
        "entity": raw[spec.ENTITY], "time": _utc(raw[spec.TIME]), "sensor": raw[spec.SENSOR],
        "raw_value": raw[spec.VALUE], "raw_unit": raw[spec.UNIT].replace("", None),
    })
    del raw
    df = df.drop_duplicates(ignore_index=True)
    sensors = pd.DataFrame(spec.sensor_rows(), columns=["sensor", "unit", "lo", "hi"])
    conv = pd.DataFrame(spec.conversion_rows(), columns=["raw_unit", "unit", "f", "o"])
    df = df.merge(sensors, on="sensor", how="left").merge(conv, on=["raw_unit", "unit"], how="left")
    df["value"] = df["raw_value"] * df["f"] + df["o"]
    df["flag_missing"] = df["raw_value"].isna()
    df["flag_unit_unknown"] = df["raw_value"].notna() & df["f"].isna()
    df["flag_out_of_range"] = df["value"].notna() & ((df["value"] < df["lo"]) | (df["value"] > df["hi"]))
    df = df.sort_values(["sensor", "entity", "time"], ignore_index=True, kind="stable")
    df["flag_key_duplicate"] = df.duplicated(list(spec.KEY), keep=False)
    good = df["value"].notna() & ~df["flag_out_of_range"]
    series = [df["entity"], df["sensor"]]
    med = df["value"].where(good).groupby(series).transform("median")
    dev = (df["value"] - med).abs()
    mad = dev.where(good).groupby(series).transform("median")
    df["flag_outlier"] = (good & (mad > 0) & (dev > spec.OUTLIER_MAD * spec.MAD_SCALE * mad)).fillna(False).astype(bool)
    step = df.groupby(["entity", "sensor"], sort=False)["time"].diff()
    df["flag_gap_before"] = (step > pd.Timedelta(microseconds=spec.GAP_US)).to_numpy()
    df["flag_late"] = False
    return df[list(spec.CURATED_COLUMNS)]


def _gx() -> Any:
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # nothing leaves the machine
    import great_expectations as gx

    return gx


def suite() -> Any:
    """The contract's rules as a hand-written GX suite (what datalab derives from the contract)."""
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column as C

    E = gx.expectations
    exps = [
        E.ExpectTableColumnsToMatchSet(column_set=list(spec.CURATED_COLUMNS), exact_match=False),
        E.ExpectColumnValuesToNotBeNull(column="entity"),
        E.ExpectColumnValuesToMatchRegex(column="entity", regex=spec.ENTITY_REGEX),
        E.ExpectColumnValuesToNotBeNull(column="time"),
        E.ExpectColumnValuesToNotBeNull(column="sensor"),
        E.ExpectColumnValuesToBeInSet(column="sensor", value_set=list(spec.SENSORS)),
    ]
    for s, (unit, lo, hi) in spec.SENSORS.items():
        exps.append(E.ExpectColumnValuesToBeInSet(column="unit", value_set=[unit], row_condition=C("sensor") == s))
        exps.append(E.ExpectColumnValuesToBeBetween(column="value", min_value=lo, max_value=hi,
                                                    mostly=1 - spec.INVALID_MAX_SHARE, row_condition=C("sensor") == s))
    exps += [
        E.ExpectTableRowCountToBeBetween(min_value=0, strict_min=True),
        E.ExpectColumnValuesToNotBeNull(column="value", mostly=1 - spec.NULL_MAX_SHARE),
        E.ExpectCompoundColumnsToBeUnique(column_list=list(spec.KEY), mostly=1 - spec.DUPLICATE_MAX_SHARE),
    ]
    return gx.ExpectationSuite(name="spindle", expectations=exps)


def validate(df: pd.DataFrame) -> list[dict]:
    """Run the suite on the curated frame with an ephemeral GX context."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (ctx.data_sources.add_pandas("bench").add_dataframe_asset("curated")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df}))
    res = batch.validate(suite(), result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20})
    checks = []
    for r in res.results:
        cfg = r.expectation_config
        kw = cfg.kwargs
        name = cfg.type + "(" + str(kw.get("column") or kw.get("column_list") or "") + (
            f", {kw['row_condition']}" if kw.get("row_condition") else "") + ")"
        got = r.result or {}
        total = got.get("element_count", got.get("observed_value"))
        checks.append({"name": name, "unexpected": int(got.get("unexpected_count") or 0),
                       "total": total if isinstance(total, int) else 0, "success": bool(r.success)})
    return checks


def counts(df: pd.DataFrame) -> dict:
    v = df["value"]
    return {"rows_out": len(df), "values_converted": int((v.notna() & (v != df["raw_value"])).sum()),
            **{f: int(df[f].sum()) for f in spec.FLAGS}}


def run(path: Path, out: Path) -> dict:
    """Curate ``path`` (delivery CSV) into ``out`` (Parquet) and validate it; counts and stage times."""
    path, out = Path(path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    df = curate(path)
    stages["curate"] = time.perf_counter() - t
    t = time.perf_counter()
    checks = validate(df)
    stages["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    df.to_parquet(out, index=False, compression="zstd")
    stages["write"] = time.perf_counter() - t
    with open(path, "rb") as fh:  # bookkeeping, not timed: data lines = newlines - header
        rows_in = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 24), b"")) - 1
    return spec.result("pandas_gx", path, out, rows_in, counts(df), checks, stages)


def main(argv: list[str] | None = None) -> None:
    spec.cli(run, "pandas_gx.py", argv)


if __name__ == "__main__":
    main()
