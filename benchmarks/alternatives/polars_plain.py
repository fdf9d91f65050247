"""The spindle curation and validation as a plain Polars streaming script.

What a data engineer who knows Polars would write instead of datalab: one
lazy plan from the CSV to Parquet (``sink_parquet``, streaming engine), then
the contract's checks as plain expressions over the written file. No push
checks, receipts, catalog, Great Expectations or versioning.

    .venv/bin/python benchmarks/alternatives/polars_plain.py delivery.csv out.parquet
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import spindle_spec as spec
else:
    from . import spindle_spec as spec


def _utc(ts: pl.Expr) -> pl.Expr:
    """ISO text with Z or an offset -> UTC; naive text -> local time in the contract's zone -> UTC."""
    norm = ts.str.replace("Z$", "+00:00")
    aware = norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", time_unit="us", strict=False).dt.convert_time_zone("UTC")
    naive = (norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
             .dt.replace_time_zone(spec.TIMEZONE, ambiguous="earliest", non_existent="null")
             .dt.convert_time_zone("UTC"))
    return aware.fill_null(naive)


def plan(path: Path) -> pl.LazyFrame:
    """CSV -> curated long table (same columns and flags as datalab's curated table)."""
    sensors = pl.LazyFrame(spec.sensor_rows(), schema={"sensor": pl.String, "unit": pl.String, "lo": pl.Float64, "hi": pl.Float64},
                           orient="row")
    conv = pl.LazyFrame(spec.conversion_rows(),
                        schema={"raw_unit": pl.String, "unit": pl.String, "f": pl.Float64, "o": pl.Float64}, orient="row")
    lf = pl.scan_csv(path, schema_overrides={spec.ENTITY: pl.String, spec.TIME: pl.String, spec.SENSOR: pl.String,
                                             spec.VALUE: pl.Float64, spec.UNIT: pl.String})
    series = ["entity", "sensor"]
    good = pl.col("value").is_not_null() & ~pl.col("flag_out_of_range")
    dev = (pl.col("value") - pl.col("med")).abs()
    prev_same = (pl.col("entity") == pl.col("entity").shift(1)) & (pl.col("sensor") == pl.col("sensor").shift(1))
    return (
        lf.select(entity=pl.col(spec.ENTITY), time=_utc(pl.col(spec.TIME)), sensor=pl.col(spec.SENSOR),
                  raw_value=pl.col(spec.VALUE), raw_unit=pl.col(spec.UNIT))
        .unique()
        .join(sensors, on="sensor", how="left")
        .join(conv, on=["raw_unit", "unit"], how="left")
        .with_columns(value=pl.col("raw_value") * pl.col("f") + pl.col("o"),
                      flag_missing=pl.col("raw_value").is_null(),
                      flag_unit_unknown=pl.col("raw_value").is_not_null() & pl.col("f").is_null())
        .with_columns(flag_out_of_range=pl.col("value").is_not_null()
                      & ((pl.col("value") < pl.col("lo")) | (pl.col("value") > pl.col("hi"))).fill_null(False))
        .sort(["sensor", "entity", "time"])
        .with_columns(flag_key_duplicate=pl.len().over(list(spec.KEY)) > 1,
                      med=pl.col("value").filter(good).median().over(series))
        .with_columns(mad=dev.filter(good).median().over(series))
        .with_columns(
            flag_outlier=(good & (pl.col("mad") > 0) & (dev > spec.OUTLIER_MAD * spec.MAD_SCALE * pl.col("mad"))).fill_null(False),
            flag_gap_before=(prev_same & ((pl.col("time") - pl.col("time").shift(1)).dt.total_microseconds() > spec.GAP_US)).fill_null(False),
            flag_late=pl.lit(False),
        )
        .select(spec.CURATED_COLUMNS)
    )


def validate(out: Path) -> tuple[dict, list[dict]]:
    """The contract's checks and the result counts, as one pass of expressions over the written file."""
    lf = pl.scan_parquet(out)
    missing_cols = set(spec.CURATED_COLUMNS) - set(lf.collect_schema().names())
    v = pl.col("value")
    exprs = {
        "rows_out": pl.len(),
        "values_converted": (v.is_not_null() & (v != pl.col("raw_value"))).sum(),
        **{f: pl.col(f).sum() for f in spec.FLAGS},
        "entity_null": pl.col("entity").is_null().sum(),
        "entity_bad": (~pl.col("entity").str.contains(spec.ENTITY_REGEX)).sum(),
        "time_null": pl.col("time").is_null().sum(),
        "sensor_null": pl.col("sensor").is_null().sum(),
        "sensor_bad": (~pl.col("sensor").is_in(list(spec.SENSORS))).sum(),
        "value_null": v.is_null().sum(),
    }
    for s, (unit, lo, hi) in spec.SENSORS.items():
        mine = pl.col("sensor") == s
        exprs[f"{s}:n"] = mine.sum()
        exprs[f"{s}:nonnull"] = (mine & v.is_not_null()).sum()
        exprs[f"{s}:unit_bad"] = (mine & (pl.col("unit") != unit)).sum()
        exprs[f"{s}:range_bad"] = (mine & ((v < lo) | (v > hi))).sum()
    r = lf.select(**exprs).collect().row(0, named=True)
    n = r["rows_out"]
    checks = [
        {"name": "columns", "unexpected": len(missing_cols), "total": len(spec.CURATED_COLUMNS), "success": not missing_cols},
        spec.check("rows > 0", 0 if n > 0 else 1, 1),
        spec.check("entity not null", r["entity_null"], n),
        spec.check("entity pattern", r["entity_bad"], n - r["entity_null"]),
        spec.check("time not null", r["time_null"], n),
        spec.check("sensor not null", r["sensor_null"], n),
        spec.check("sensor in set", r["sensor_bad"], n - r["sensor_null"]),
    ]
    for s in spec.SENSORS:
        checks.append(spec.check(f"{s}: unit", r[f"{s}:unit_bad"], r[f"{s}:n"]))
        checks.append(spec.check(f"{s}: range", r[f"{s}:range_bad"], r[f"{s}:nonnull"], spec.INVALID_MAX_SHARE))
    checks.append(spec.check("value not null", r["value_null"], n, spec.NULL_MAX_SHARE))
    checks.append(spec.check("key unique", r["flag_key_duplicate"], n, spec.DUPLICATE_MAX_SHARE))
    return r, checks


def run(path: Path, out: Path) -> dict:
    """Curate ``path`` (delivery CSV) into ``out`` (Parquet) and validate it; counts and stage times."""
    path, out = Path(path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    t = time.perf_counter()
    plan(path).sink_parquet(out, engine="streaming")
    stages["curate"] = time.perf_counter() - t
    t = time.perf_counter()
    counts, checks = validate(out)
    stages["validate"] = time.perf_counter() - t
    rows_in = pl.scan_csv(path).select(pl.len()).collect().item()  # bookkeeping, not timed
    return spec.result("polars", path, out, rows_in, counts, checks, stages)


def main(argv: list[str] | None = None) -> None:
    spec.cli(run, "polars_plain.py", argv)


if __name__ == "__main__":
    main()
