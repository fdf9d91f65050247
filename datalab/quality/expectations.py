"""Expectations derived from a contract, as plain data (before they become GX objects).

The record (``ExpectationSpec``) and the readings of ODCS rules every kind may
use (``mostly_from_rule``, ``range_kwargs``, custom GX rules, row counts); each
kind derives its own suite from them (``datalab/timeseries/suite.py``,
``datalab/cad/suite.py``). Kept below the GX runner (``datalab.quality.validate``),
which finds a contract's suite through its kind (``datalab.kinds``), so that the
kinds can derive suites without importing the runner.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datalab.quality.results import ExpectationResult

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datalab.contracts.contract import Column, Contract

# the runner's logger: the warnings read as they did before the derivation moved here
log = logging.getLogger("datalab.quality.validate")

_EQ_CONDITION = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_]*)\s*==\s*(["'])(.*)\2\s*$""")


_BAD_FRACTION_METRICS = ("nullValues", "missingValues", "invalidValues", "duplicateValues")


@dataclass
class ExpectationSpec:
    """One expectation derived from the contract, before it becomes a GX object.

    Kept as plain data so that the derivation can be read, diffed and tested
    without GX, and so that every failure can be traced back to the contract
    field (``source``) that asked for it.
    """

    type: str  # GX snake-case name, e.g. "expect_column_values_to_be_between"
    kwargs: dict[str, Any]
    source: str  # where it comes from, for people
    sensor: str | None = None
    # The name of the derivation's rule that wrote it (``datalab/timeseries/suite.py``), or None
    # (hand-written suites, the CAD suite, whose ``source`` names its rule). A label for people,
    # left out of ``to_dict``: the GX runner fingerprints that, and renaming a rule changes
    # nothing GX runs.
    rule: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "kwargs": _jsonable(self.kwargs),
            "source": self.source,
            "sensor": self.sensor,
        }


def _rule_operator(rule: dict[str, Any]) -> tuple[str, Any] | None:
    """The one ``mustBe*`` operator of a quality rule and its operand."""
    ops = [(k, v) for k, v in rule.items() if isinstance(k, str) and k.startswith("must")]
    return ops[0] if len(ops) == 1 else None


def _rule_text(rule: dict[str, Any]) -> str:
    op = _rule_operator(rule)
    unit = rule.get("unit", "rows")
    return f"{rule.get('metric')} {op[0]} {op[1]} {unit}" if op else str(rule.get("metric"))


def mostly_from_rule(rule: dict[str, Any]) -> tuple[float, str]:
    """The GX ``mostly`` a bad-value rule grants, and a note on how it was read.

    The rule bounds the share of *bad* values; ``mostly`` is the share of
    *good* values GX demands, so ``mustBeLessThan p`` (percent) becomes
    ``mostly = 1 - p/100``. GX compares ``good share >= mostly``, so strict
    and inclusive upper bounds collapse onto the same value (the difference is
    a single row at the boundary). ``mustBe p`` with p > 0 is read as "at
    most p" (GX cannot demand an exact share). A limit in ``rows`` cannot be turned into a
    share before the rows are counted, so it falls back to ``mostly = 1.0``
    (strict) unless the limit is zero, where both readings agree. Operators
    that do not bound bad values from above (``mustBeGreaterThan`` ...) give
    no tolerance to grant, so they also yield 1.0, with a note.
    """
    op = _rule_operator(rule)
    if op is None:
        return 1.0, f"{rule.get('metric')}: no single mustBe* operator; mostly=1.0"
    name, operand = op
    if name in ("mustBe", "mustBeLessThan", "mustBeLessOrEqualTo"):
        limit = operand
    elif name == "mustBeBetween" and isinstance(operand, (list, tuple)) and len(operand) == 2:
        limit = operand[1]  # only the upper bound is a tolerance
    else:
        return 1.0, f"{_rule_text(rule)} is not an upper bound on bad values; mostly=1.0"
    if not isinstance(limit, (int, float)) or isinstance(limit, bool):
        return 1.0, f"{_rule_text(rule)}: limit is not a number; mostly=1.0"
    if limit <= 0:
        return 1.0, f"{_rule_text(rule)} -> mostly=1.0"
    if rule.get("unit", "rows") == "percent":
        mostly = min(1.0, max(0.0, 1.0 - float(limit) / 100.0))
        return round(mostly, 10), f"{_rule_text(rule)} -> mostly={round(mostly, 10):g}"
    return (
        1.0,
        f"{_rule_text(rule)}: a row limit cannot be a share before counting rows; mostly=1.0",
    )


def _property_rule(col: Column, metrics: tuple[str, ...]) -> tuple[int, dict[str, Any]] | None:
    for j, rule in enumerate(col.quality):
        if (
            isinstance(rule, dict)
            and rule.get("type", "library") == "library"
            and rule.get("metric") in metrics
        ):
            return j, rule
    return None


def _sensor_condition(name: str) -> dict[str, str]:
    # Written in the legacy string form because it is readable in specs, JSON
    # reports and hand-written suites; _build_expectation turns it into a GX
    # Condition object (the string form is deprecated since GX 1.9).
    return {"row_condition": f'sensor=="{name}"', "condition_parser": "pandas"}


def _row_count_kwargs(name: str, operand: Any) -> dict[str, Any] | None:
    """``rowCount`` operator -> kwargs of expect_table_row_count_to_be_between."""
    if name == "mustBeGreaterThan":
        return {"min_value": operand, "strict_min": True}
    if name == "mustBeGreaterOrEqualTo":
        return {"min_value": operand}
    if name == "mustBeLessThan":
        return {"max_value": operand, "strict_max": True}
    if name == "mustBeLessOrEqualTo":
        return {"max_value": operand}
    if name == "mustBe":
        return {"min_value": operand, "max_value": operand}
    if name == "mustBeBetween" and isinstance(operand, (list, tuple)) and len(operand) == 2:
        return {"min_value": operand[0], "max_value": operand[1]}
    return None  # mustNotBe, mustNotBeBetween: not expressible as one range


def _custom_spec(rule: dict[str, Any], where: str, col: Column | None) -> ExpectationSpec | None:
    """A ``type: custom, engine: great-expectations`` rule, as written.

    On a measurement property a column expectation without a column (or
    naming the property) is aimed at ``value`` for that sensor, since the
    long table has no column per sensor.
    """
    impl = rule.get("implementation") or {}
    etype = impl.get("type") or impl.get("expectation_type")
    if not isinstance(etype, str):
        log.warning("%s: custom rule without an expectation type; ignored", where)
        return None
    kwargs = dict(impl.get("kwargs") or {})
    sensor = None
    if col is not None and etype.startswith("expect_column_") and "column_list" not in kwargs:
        if col.role == "measurement":
            if kwargs.get("column") in (None, col.name):
                kwargs["column"] = "value"
                kwargs.update(_sensor_condition(col.name))
                sensor = col.name
        elif col.role == "entity":
            kwargs.setdefault("column", "entity")
        elif col.role == "time":
            kwargs.setdefault("column", "time")
        else:
            kwargs.setdefault("column", col.name)
    return ExpectationSpec(etype, kwargs, f"{where} (custom)", sensor)


def range_kwargs(col: Column) -> dict[str, Any]:
    """min/max kwargs of a range expectation from a property's bounds; exclusive ones are strict.

    Where a property gives both an inclusive and an exclusive lower (upper)
    bound, the tighter one holds.
    """
    out: dict[str, Any] = {}
    for inc, exc, key, strict, tighter in (
        (col.minimum, col.exclusive_minimum, "min_value", "strict_min", max),
        (col.maximum, col.exclusive_maximum, "max_value", "strict_max", min),
    ):
        if exc is not None and (inc is None or tighter(inc, exc) == exc):
            out[key], out[strict] = exc, True
        elif inc is not None:
            out[key] = inc
    if out:
        out.setdefault("min_value", None)
        out.setdefault("max_value", None)
    return out


# The lab's own rule on curation's counts (not a GX expectation: GX sees the
# curated table, after the duplicates are gone). See ``lab_rules``.
LAB_MAX_DUPLICATE_SHARE = "lab_max_duplicate_share"


def lab_rules(contract: Contract, stats: dict[str, Any] | None) -> list[ExpectationResult]:
    """Results of the lab's rules on a delivery's curation counts, beside GX's (``by_lab``).

    ``lab_max_duplicate_share``: the share of the delivery's rows that
    repeat a key (entity, time, sensor) of an earlier row, removed as exact
    duplicates or flagged as key duplicates, must not exceed the contract's
    ``curation.max_duplicate_share`` (default 5 %). A layout that gave
    101,782 of 240,000 real samples one time each passed every GX
    expectation, because the duplicates were gone by then (issue 23).
    ``index`` is -1: the runner numbers them after the suite.
    """
    if not contract.series or not stats or "duplicate_share" not in stats:
        return []
    share, limit = float(stats["duplicate_share"]), contract.curation.max_duplicate_share
    ok = share <= limit
    n = int(stats.get("duplicate_rows") or 0)
    msg = (f"{n:,} of {int(stats.get('rows_in') or 0):,} rows ({share:.2%}) repeat an earlier row's key (entity, time, sensor); "
           f"the contract allows {limit:.2%} (customProperties curation.max_duplicate_share)")
    return [ExpectationResult(
        index=-1, type=LAB_MAX_DUPLICATE_SHARE, success=ok, column=None, sensor=None,
        kwargs={"max_share": limit}, source="customProperties.curation.max_duplicate_share (default 0.05)",
        unexpected_count=n, unexpected_percent=round(share * 100, 4), sample_values=(),
        observed_value=round(share, 6), element_count=int(stats.get("rows_in") or 0),
        message=("" if ok else "FAILED: ") + msg, rule=LAB_MAX_DUPLICATE_SHARE, by_lab=True,
    )]


def _jsonable(x: Any) -> Any:
    """Make ``x`` JSON-safe: NaN/inf -> None, timestamps -> ISO text, numpy -> Python."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (dt.datetime, dt.date, dt.time)):
        return x.isoformat()
    if isinstance(x, Path):
        return str(x)
    item = getattr(x, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    isoformat = getattr(x, "isoformat", None)  # pandas Timestamp, NaT
    if callable(isoformat):
        try:
            text = isoformat()
        except (TypeError, ValueError):
            return None
        return None if text == "NaT" else text
    tolist = getattr(x, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    if type(x).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(x, "to_json_dict"):
        return _jsonable(x.to_json_dict())
    return str(x)

