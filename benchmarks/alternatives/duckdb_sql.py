"""The spindle curation and validation as DuckDB SQL.

What a data engineer who prefers SQL would write: one ``COPY (SELECT ...)
TO 'out.parquet'`` statement reading the CSV, with window functions for key
duplicates, series medians and gaps, then the contract's checks as one
aggregate query over the written file.

    .venv/bin/python benchmarks/alternatives/duckdb_sql.py delivery.csv out.parquet
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import spindle_spec as spec
else:
    from . import spindle_spec as spec


def _values(rows: list[tuple]) -> str:
    """A VALUES list literal for small constant tables (units, limits)."""
    def lit(x: object) -> str:
        return f"{x!r}" if isinstance(x, float) else "'" + str(x).replace("'", "''") + "'"
    return ", ".join("(" + ", ".join(lit(x) for x in r) + ")" for r in rows)


def curate_sql(path: Path, out: Path) -> str:
    """The COPY statement: CSV -> curated long table (same columns and flags as datalab)."""
    p = str(path).replace("'", "''")
    o = str(out).replace("'", "''")
    return f"""
COPY (
WITH sensors(sensor, unit, lo, hi) AS (VALUES {_values(spec.sensor_rows())}),
conv(raw_unit, unit, f, o) AS (VALUES {_values(spec.conversion_rows())}),
src AS (
  SELECT {spec.ENTITY} AS entity,
         CASE WHEN regexp_matches({spec.TIME}, '(Z|[+-][0-9]{{2}}:?[0-9]{{2}})$')
              THEN CAST({spec.TIME} AS TIMESTAMPTZ)
              ELSE timezone('{spec.TIMEZONE}', CAST({spec.TIME} AS TIMESTAMP)) END AS time,
         {spec.SENSOR} AS sensor, {spec.VALUE} AS raw_value, {spec.UNIT} AS raw_unit
  FROM read_csv('{p}', header = true,
                columns = {{'{spec.ENTITY}': 'VARCHAR', '{spec.TIME}': 'VARCHAR', '{spec.SENSOR}': 'VARCHAR',
                           '{spec.VALUE}': 'DOUBLE', '{spec.UNIT}': 'VARCHAR'}})
),
dedup AS (SELECT DISTINCT * FROM src),
conv_ AS (
  SELECT d.entity, d.time, d.sensor, d.raw_value * c.f + c.o AS value, s.unit, d.raw_value, d.raw_unit,
         d.raw_value IS NULL AS flag_missing,
         d.raw_value IS NOT NULL AND c.f IS NULL AS flag_unit_unknown,
         coalesce(d.raw_value * c.f + c.o < s.lo OR d.raw_value * c.f + c.o > s.hi, false) AS flag_out_of_range
  FROM dedup d LEFT JOIN sensors s USING (sensor) LEFT JOIN conv c ON c.raw_unit = d.raw_unit AND c.unit = s.unit
),
win AS (
  SELECT *,
         count(*) OVER (PARTITION BY entity, time, sensor) > 1 AS flag_key_duplicate,
         median(CASE WHEN value IS NOT NULL AND NOT flag_out_of_range THEN value END)
           OVER (PARTITION BY entity, sensor) AS med,
         epoch_us(time) - lag(epoch_us(time)) OVER (PARTITION BY entity, sensor ORDER BY time) AS step_us
  FROM conv_
),
mad AS (
  SELECT *, median(CASE WHEN value IS NOT NULL AND NOT flag_out_of_range THEN abs(value - med) END)
              OVER (PARTITION BY entity, sensor) AS mad
  FROM win
)
SELECT entity, time, sensor, value, unit, raw_value, raw_unit,
       flag_missing, flag_unit_unknown, flag_out_of_range, flag_key_duplicate,
       coalesce(value IS NOT NULL AND NOT flag_out_of_range AND mad > 0
                AND abs(value - med) > {spec.OUTLIER_MAD} * {spec.MAD_SCALE} * mad, false) AS flag_outlier,
       coalesce(step_us > {spec.GAP_US}, false) AS flag_gap_before,
       false AS flag_late
FROM mad
ORDER BY sensor, entity, time
) TO '{o}' (FORMAT parquet, COMPRESSION zstd)
"""


def validate(con: duckdb.DuckDBPyConnection, out: Path) -> tuple[dict, list[dict]]:
    """The contract's checks and the result counts, as one aggregate query over the written file."""
    o = str(out).replace("'", "''")
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{o}')").fetchall()}
    missing_cols = set(spec.CURATED_COLUMNS) - cols
    sens = ", ".join(f"'{s}'" for s in spec.SENSORS)
    aggs = [
        "count(*) AS rows_out",
        "count(*) FILTER (WHERE value IS NOT NULL AND value <> raw_value) AS values_converted",
        *(f"count(*) FILTER (WHERE {f}) AS {f}" for f in spec.FLAGS),
        "count(*) FILTER (WHERE entity IS NULL) AS entity_null",
        f"count(*) FILTER (WHERE NOT regexp_full_match(entity, '{spec.ENTITY_REGEX.strip('^$')}')) AS entity_bad",
        "count(*) FILTER (WHERE time IS NULL) AS time_null",
        "count(*) FILTER (WHERE sensor IS NULL) AS sensor_null",
        f"count(*) FILTER (WHERE sensor NOT IN ({sens})) AS sensor_bad",
        "count(*) FILTER (WHERE value IS NULL) AS value_null",
    ]
    for i, (s, (unit, lo, hi)) in enumerate(spec.SENSORS.items()):
        aggs += [
            f"count(*) FILTER (WHERE sensor = '{s}') AS s{i}_n",
            f"count(value) FILTER (WHERE sensor = '{s}') AS s{i}_nonnull",
            f"count(*) FILTER (WHERE sensor = '{s}' AND unit IS DISTINCT FROM '{unit}') AS s{i}_unit_bad",
            f"count(*) FILTER (WHERE sensor = '{s}' AND (value < {lo} OR value > {hi})) AS s{i}_range_bad",
        ]
    cur = con.execute(f"SELECT {', '.join(aggs)} FROM read_parquet('{o}')")
    r = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
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
    for i, s in enumerate(spec.SENSORS):
        checks.append(spec.check(f"{s}: unit", r[f"s{i}_unit_bad"], r[f"s{i}_n"]))
        checks.append(spec.check(f"{s}: range", r[f"s{i}_range_bad"], r[f"s{i}_nonnull"], spec.INVALID_MAX_SHARE))
    checks.append(spec.check("value not null", r["value_null"], n, spec.NULL_MAX_SHARE))
    checks.append(spec.check("key unique", r["flag_key_duplicate"], n, spec.DUPLICATE_MAX_SHARE))
    return r, checks


def run(path: Path, out: Path, threads: int | None = None) -> dict:
    """Curate ``path`` (delivery CSV) into ``out`` (Parquet) and validate it; counts and stage times."""
    path, out = Path(path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    stages: dict[str, float] = {}
    t = time.perf_counter()
    con.execute(curate_sql(path, out))
    stages["curate"] = time.perf_counter() - t
    t = time.perf_counter()
    counts, checks = validate(con, out)
    stages["validate"] = time.perf_counter() - t
    p = str(path).replace("'", "''")
    rows_in = con.execute(f"SELECT count(*) FROM read_csv('{p}', header = true, all_varchar = true)").fetchone()[0]
    con.close()
    return spec.result("duckdb", path, out, rows_in, counts, checks, stages)


def main(argv: list[str] | None = None) -> None:
    spec.cli(run, "duckdb_sql.py", argv)


if __name__ == "__main__":
    main()
