"""The bavaria-spindle contract's rules as plain constants, for the alternatives.

A data engineer writing the curation by hand (pandas, Polars, DuckDB) would
copy the contract's numbers into the script rather than interpret ODCS. This
module is that copy, shared by the three alternatives so that each does the
same work as datalab's curation plan and derived suite
(``data_contracts/providers/bavaria-spindle/spindle-telemetry.yaml``):

* timestamps: ISO-8601 with ``Z`` or an offset, or naive local time in
  ``TIMEZONE`` (ambiguous autumn times: the earlier instant), all to UTC;
* exact duplicate readings (after parsing) are dropped, nothing else is;
* values converted to the canonical unit as ``value * factor + offset``;
* flags: missing value, unknown unit, out of range (after conversion), key
  duplicate (entity, time, sensor), robust outlier (more than
  ``OUTLIER_MAD`` x 1.4826 x MAD from the series median, among in-range
  values), gap (more than ``GAP_FACTOR`` expected steps since the previous
  reading of the series); ``flag_late`` is always false here (a first
  delivery has no earlier watermark, as in the benchmark's datalab run);
* validation: the expectations datalab derives from the contract.

``tests/test_bench_alternatives.py`` checks that the constants and the
alternatives agree with datalab on a generated delivery.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

CONTRACT_ID = "urn:datalab:bavaria-spindle:spindle-telemetry"

# Columns of the delivery (long layout) and of the curated table.
ENTITY, TIME, SENSOR, VALUE, UNIT = "machine_id", "ts", "sensor", "value", "unit"
TIMEZONE = "Europe/Berlin"  # layout.timezone: naive timestamps are local time
ENTITY_REGEX = r"^BSW-M[0-9]{2}$"

# curation: sampling_interval 1s, gap_factor 3, outlier_mad 8
EXPECTED_STEP_US = 1_000_000
GAP_FACTOR = 3
GAP_US = GAP_FACTOR * EXPECTED_STEP_US
OUTLIER_MAD = 8.0
MAD_SCALE = 1.4826

# sensor -> (canonical unit, minimum, maximum)
SENSORS: dict[str, tuple[str, float, float]] = {
    "spindle_temp": ("Cel", -20.0, 150.0),
    "oil_pressure": ("bar", 0.0, 250.0),
    "vibration": ("mm/s", 0.0, 50.0),
    "spindle_speed": ("/min", 0.0, 24000.0),
}

_PSI_TO_BAR = 6894.757293168361 / 1e5
# (raw unit spelling, canonical unit) -> (factor, offset): canonical = raw * factor + offset.
# The spellings plants use for each canonical unit and its usual mistakes.
CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    **{(u, "Cel"): (1.0, 0.0) for u in ("Cel", "degC", "°C", "C", "celsius")},
    **{(u, "Cel"): (5.0 / 9.0, -32.0 * 5.0 / 9.0) for u in ("[degF]", "degF", "°F", "F", "fahrenheit")},
    **{(u, "Cel"): (1.0, -273.15) for u in ("K", "kelvin")},
    ("bar", "bar"): (1.0, 0.0),
    ("mbar", "bar"): (1e-3, 0.0),
    ("Pa", "bar"): (1e-5, 0.0),
    ("kPa", "bar"): (1e-2, 0.0),
    ("MPa", "bar"): (10.0, 0.0),
    **{(u, "bar"): (_PSI_TO_BAR, 0.0) for u in ("[psi]", "psi", "psia")},
    ("mm/s", "mm/s"): (1.0, 0.0),
    ("m/s", "mm/s"): (1000.0, 0.0),
    **{(u, "mm/s"): (25.4, 0.0) for u in ("[in_i]/s", "in/s", "ips")},
    **{(u, "/min"): (1.0, 0.0) for u in ("/min", "rpm", "1/min")},
    ("Hz", "/min"): (60.0, 0.0),
}

# Validation (the suite datalab derives from the contract):
INVALID_MAX_SHARE = 0.03  # per sensor: out-of-range readings < 3 %  (mostly 0.97)
NULL_MAX_SHARE = 0.05  # table: missing readings < 5 %               (mostly 0.95)
DUPLICATE_MAX_SHARE = 0.05  # table: readings sharing (entity, time, sensor) < 5 %
KEY = ("entity", "time", "sensor")

CURATED_COLUMNS = (
    "entity", "time", "sensor", "value", "unit", "raw_value", "raw_unit",
    "flag_missing", "flag_unit_unknown", "flag_out_of_range", "flag_key_duplicate",
    "flag_outlier", "flag_gap_before", "flag_late",
)
FLAGS = tuple(c for c in CURATED_COLUMNS if c.startswith("flag_"))


def conversion_rows() -> list[tuple[str, str, float, float]]:
    """(raw_unit, unit, factor, offset) rows, for a join."""
    return [(raw, unit, f, o) for (raw, unit), (f, o) in CONVERSIONS.items()]


def sensor_rows() -> list[tuple[str, str, float, float]]:
    """(sensor, unit, minimum, maximum) rows, for a join."""
    return [(s, u, lo, hi) for s, (u, lo, hi) in SENSORS.items()]


def result(
    tool: str, path: Path, out: Path, rows_in: int, counts: dict, checks: list[dict], stages: dict[str, float]
) -> dict:
    """The common result of one alternative's run (what run_all.py and the tests read).

    ``counts``: rows_out, values_converted and one count per flag, taken
    from the written output. ``checks``: one dict per expectation with
    name, unexpected, total and success.
    """
    return {
        "tool": tool,
        "input": str(path),
        "output": str(out),
        "rows_in": int(rows_in),
        "rows_out": int(counts["rows_out"]),
        "exact_duplicates_removed": int(rows_in) - int(counts["rows_out"]),
        "values_converted": int(counts["values_converted"]),
        "flags": {f: int(counts[f]) for f in FLAGS},
        "validation": {
            "success": all(c["success"] for c in checks),
            "expectations": len(checks),
            "failed": [c["name"] for c in checks if not c["success"]],
            "checks": checks,
        },
        "stages": {k: round(v, 4) for k, v in stages.items()},
        "seconds": round(sum(stages.values()), 4),
    }


def check(name: str, unexpected: int, total: int, max_share: float = 0.0) -> dict:
    """One expectation's outcome: passes when unexpected / total is within the allowed share.

    GX's ``mostly`` compares the *good* share with ``1 - max_share``.
    """
    good = 1.0 if total == 0 else (total - unexpected) / total
    return {"name": name, "unexpected": int(unexpected), "total": int(total),
            "success": bool(good >= 1.0 - max_share - 1e-12)}


def cli(run: Callable[[Path, Path], dict], script: str, argv: list[str] | None = None) -> None:
    """``script DELIVERY.csv OUT.parquet``: run one alternative and print its result as JSON."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        raise SystemExit(f"usage: {script} DELIVERY.csv OUT.parquet")
    res = run(Path(args[0]), Path(args[1]))
    res["validation"].pop("checks")
    print(json.dumps(res, indent=2))
