"""The derived suites evaluated by Polars, with the results Great Expectations gives (issue 21).

Validating with GX means converting the curated Parquet file to pandas (a
second read and a copy of every column) and importing GX: at 10 M rows about
4 s of suite and 3 s of import and context (issue 21). The suites the lab
derives use a dozen expectation types whose metrics are counts and simple
comparisons, so this module evaluates them on a Polars ``LazyFrame`` (a scan
of the curated file): one ``select`` computes every expectation's counts
(element, missing, unexpected, row counts) and its first
``PARTIAL_UNEXPECTED_COUNT`` unexpected values, the list GX keeps in its
SUMMARY result (the unexpected mask is computed once for both); only a column
mean reads its column once more. The result of each expectation is first
written in GX's result format (``{"success": ..., "result": {...}}``), computed
the way GX 1.x computes it: nulls, and NaN since pandas reads it as null,
leave the denominator of column-map expectations; ``mostly`` compares the
good share of the non-missing rows; ``unexpected_percent`` is the share of
the non-missing rows; the not-null expectation has no missing count. It then
becomes the lab's :class:`ExpectationResult` through :func:`record`, the
same function the GX runner uses, so both engines write the same reports.

GX stays the reference: ``tests/test_validate_fast.py`` runs every derived
expectation through both and compares the results field by field. Whatever
this module cannot evaluate exactly as GX does (another expectation type or
keyword, a row condition other than ``column=="text"``, a column that is
missing or of a type GX would treat differently, a regular expression whose
meaning differs between Python's ``re`` and Rust's ``regex``) is named by
:func:`unsupported`, and the runner then validates the whole suite with GX.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datalab.quality.expectations import _EQ_CONDITION, ExpectationSpec, _jsonable
from datalab.quality.results import ExpectationResult

# How many unexpected values GX keeps per expectation (SUMMARY format); the
# report shows the first SAMPLE_SIZE distinct ones.
PARTIAL_UNEXPECTED_COUNT = 20
SAMPLE_SIZE = 5

_RANGE = frozenset({"min_value", "max_value", "strict_min", "strict_max"})
_CONDITION = frozenset({"row_condition", "condition_parser"})
# The keywords each supported type may carry; any other keyword (result_format, catch_exceptions,
# a suite parameter ...) sends the suite to GX, which knows what it means.
KWARGS: dict[str, frozenset[str]] = {
    "expect_column_values_to_be_in_set": frozenset({"column", "value_set", "mostly"}) | _CONDITION,
    "expect_column_values_to_not_be_null": frozenset({"column", "mostly"}) | _CONDITION,
    "expect_column_values_to_be_between": frozenset({"column", "mostly"}) | _RANGE | _CONDITION,
    "expect_column_values_to_match_regex": frozenset({"column", "regex", "mostly"}) | _CONDITION,
    "expect_column_value_lengths_to_be_between": frozenset({"column", "mostly"}) | _RANGE | _CONDITION,
    "expect_column_values_to_be_increasing": frozenset({"column", "strictly", "mostly"}) | _CONDITION,
    "expect_column_pair_values_to_be_equal": frozenset({"column_A", "column_B", "ignore_row_if", "mostly"}) | _CONDITION,
    "expect_compound_columns_to_be_unique": frozenset({"column_list", "ignore_row_if", "mostly"}) | _CONDITION,
    "expect_column_mean_to_be_between": frozenset({"column"}) | _RANGE | _CONDITION,
    "expect_table_row_count_to_be_between": _RANGE | _CONDITION,
    "expect_table_columns_to_match_set": frozenset({"column_set", "exact_match"}),
}
SUPPORTED = frozenset(KWARGS)

_INTEGER = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
_TEXT = (pl.String, pl.Categorical, pl.Enum)


class Unsupported(ValueError):
    """Why the fast path cannot evaluate one expectation exactly as GX would."""


# --------------------------------------------------------------------------
# GX's result format -> the lab's result (shared with the GX runner)


def samples(values: Any) -> list[Any]:
    """Up to SAMPLE_SIZE *distinct* unexpected values, JSON-safe, in GX's order.

    Distinct because five copies of the same bad value say less than five
    different ones (an unknown sensor repeats on every row).
    """
    out: list[Any] = []
    seen: set[str] = set()
    for v in values or []:
        j = _jsonable(v)
        key = json.dumps(j, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(j)
            if len(out) == SAMPLE_SIZE:
                break
    return out


def columns_of(kwargs: dict[str, Any]) -> str | None:
    """The column(s) an expectation checks, as reports show them."""
    if isinstance(kwargs.get("column"), str):
        return kwargs["column"]
    for key in ("column_list", "column_A"):
        if key in kwargs:
            cols = kwargs[key] if key == "column_list" else [kwargs["column_A"], kwargs.get("column_B")]
            return ", ".join(str(c) for c in cols)
    return None


def record(spec: ExpectationSpec, index: int, success: bool, result: dict[str, Any],
           exception: str | None = None) -> ExpectationResult:
    """The lab's result of one expectation from GX's ``result`` dict (either engine's), JSON-safe, with its message."""
    kwargs = dict(spec.kwargs)
    mostly = kwargs.get("mostly", 1.0) if "unexpected_count" in result or "mostly" in kwargs else None
    return ExpectationResult(
        type=spec.type,
        column=columns_of(kwargs),
        sensor=spec.sensor,
        source=spec.source,
        success=bool(success),
        mostly=_jsonable(mostly),
        unexpected_count=_jsonable(result.get("unexpected_count")),
        unexpected_percent=_jsonable(result.get("unexpected_percent")),
        element_count=_jsonable(result.get("element_count")),
        missing_count=_jsonable(result.get("missing_count")),
        sample_values=tuple(samples(result.get("partial_unexpected_list"))),
        observed_value=_jsonable(result.get("observed_value")),
        kwargs=_jsonable(kwargs),
        index=index,
        details=_jsonable(result["details"]) if "details" in result else None,
        exception=exception,
        rule=spec.rule,
    ).with_message()


def _map_output(success: bool, element: int, nonnull: int | None, unexpected: int,
                partial: list[Any]) -> dict[str, Any]:
    """GX's ``_format_map_output`` (SUMMARY) for the fields the lab keeps: percents as GX divides them."""
    missing = None if nonnull is None else element - nonnull
    pct_total = pct_nonmissing = missing_pct = None
    if element > 0:
        pct_total = unexpected / element * 100
        if missing is not None:
            missing_pct = missing / element * 100
            pct_nonmissing = unexpected / nonnull * 100 if nonnull else None
        else:
            pct_nonmissing = pct_total
    result: dict[str, Any] = {"element_count": element, "unexpected_count": unexpected,
                              "unexpected_percent": pct_nonmissing, "partial_unexpected_list": partial}
    if missing is not None:
        result.update(missing_count=missing, missing_percent=missing_pct, unexpected_percent_total=pct_total,
                      unexpected_percent_nonmissing=pct_nonmissing)
    return {"success": success, "result": result}


def _mostly_success(considered: int, unexpected: int, mostly: float) -> bool:
    """GX's ``_mostly_success``: the good share of the rows considered, as floats, against ``mostly``."""
    return (float(considered) - float(unexpected)) / float(considered) >= mostly


def _between(value: Any, kw: dict[str, Any]) -> bool:
    """GX's ``_validate_metric_value_between`` for a number."""
    lo, hi = kw.get("min_value"), kw.get("max_value")
    above = lo is None or (value > lo if kw.get("strict_min") else value >= lo)
    below = hi is None or (value < hi if kw.get("strict_max") else value <= hi)
    return bool(above and below)


# --------------------------------------------------------------------------
# planning: what each expectation computes


@dataclass
class _Plan:
    """One expectation's share of the single aggregate query, and how its GX result is built from it.

    ``aggs``: named aggregate expressions (one row each), among them, for
    a map expectation, ``{i}:sample``: the first PARTIAL_UNEXPECTED_COUNT
    unexpected values in row order (a list; Polars computes the unexpected
    mask once for the count and the list). ``finish``: the GX-format result
    from the aggregate row and GX's partial_unexpected_list (or the
    ``extra`` query's answer). ``values``: the sample list as GX lists it.
    """

    aggs: list[pl.Expr]
    finish: Callable[[dict[str, Any], Any], dict[str, Any]]
    values: Callable[[list[Any], frozenset[str]], list[Any]] | None = None
    extra: Callable[[pl.LazyFrame], Any] | None = None  # a query of its own (the mean, computed as pandas does)
    # The row condition (column, text) whose rows ``aggs`` are computed over: evaluate() filters
    # them once for every expectation with the same condition (None: over every row).
    where: tuple[str, str] | None = None
    # Columns the aggs read more than once, computed first (``with_columns``): Polars does not
    # share a window expression between two aggregates, and computed twice it doubled the cost.
    columns: dict[str, pl.Expr] = field(default_factory=dict)


def _rows_where(where: tuple[str, str]) -> pl.Expr:
    """The rows of a ``column=="text"`` condition; null rows never match, as in pandas (NaN == "x" is False)."""
    col, text = where
    return (_text(col) == text).fill_null(False)


def _condition_key(kw: dict[str, Any], schema: pl.Schema) -> tuple[str, str] | None:
    """The (column, text) of the lab's ``column=="text"`` row condition, or Unsupported for any other."""
    rc = kw.get("row_condition")
    if rc is None:
        if kw.get("condition_parser") is not None:
            raise Unsupported("condition_parser without a row_condition")
        return None
    if not isinstance(rc, str) or kw.get("condition_parser") not in (None, "pandas"):
        raise Unsupported(f"row condition {rc!r} with parser {kw.get('condition_parser')!r}")
    m = _EQ_CONDITION.match(rc)
    if not m:
        raise Unsupported(f"row condition {rc!r} is not of the form column==\"text\"")
    col, text = m.group(1), m.group(3)
    _need(schema, col, _TEXT, "a row condition on text")
    return col, text


def _need(schema: pl.Schema, col: Any, kinds: tuple[Any, ...] | None, what: str) -> pl.DataType:
    if not isinstance(col, str) or col not in schema:
        raise Unsupported(f"column {col!r} is not in the table (GX reports the error)")
    dtype = schema[col]
    if kinds is not None and not isinstance(dtype, kinds) and dtype not in kinds:
        raise Unsupported(f"column {col!r} is {dtype}, not {what}")
    return dtype


def _text(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.String)


def _present(col: str, dtype: pl.DataType) -> pl.Expr:
    """Not missing as pandas sees it: null, and NaN in a float column, are missing."""
    e = pl.col(col).is_not_null()
    return e & pl.col(col).is_not_nan() if dtype.is_float() else e


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mostly(kw: dict[str, Any]) -> float:
    m = kw.get("mostly", 1.0)
    if not _number(m) or not 0 <= m <= 1:
        raise Unsupported(f"mostly={m!r}")
    return float(m)


def _range(kw: dict[str, Any]) -> None:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if lo is None and hi is None:
        raise Unsupported("neither min_value nor max_value (GX raises)")
    if any(v is not None and not _number(v) for v in (lo, hi)):
        raise Unsupported(f"bounds {lo!r}, {hi!r} are not both numbers")
    if lo is not None and hi is not None and lo > hi:
        raise Unsupported("min_value > max_value (GX raises)")
    if any(not isinstance(kw.get(k, False), bool) for k in ("strict_min", "strict_max")):
        raise Unsupported("strict_min/strict_max must be true or false")


def _in_range(e: pl.Expr, kw: dict[str, Any]) -> pl.Expr:
    """GX's vectorised between (``_pandas_vectorized``)."""
    lo, hi = kw.get("min_value"), kw.get("max_value")
    out = pl.lit(True)
    if lo is not None:
        out = out & (e > lo if kw.get("strict_min") else e >= lo)
    if hi is not None:
        out = out & (e < hi if kw.get("strict_max") else e <= hi)
    return out


_ESCAPES_SAME = set("dD") | set(r"\.^$*+?()[]{}|/-_ #&~,:;<>=!'\"@%`")


def rust_regex(pattern: str) -> str:
    """``pattern`` for Polars (Rust ``regex``) with the meaning Python's ``re.search`` gives it, or Unsupported.

    GX matches with pandas' ``str.contains`` (Python ``re``). The two engines
    agree on the plain patterns contracts use (anchors, classes, counts,
    ``\\d``); they differ on ``\\w``/``\\s``/``\\b`` (Unicode tables), inline
    flags, look-arounds, set operations and POSIX classes inside ``[...]``,
    and ``$``, which Python also matches before a final newline. ``$`` is
    rewritten to that meaning; the others are refused.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
            if nxt not in _ESCAPES_SAME:
                raise Unsupported(f"regex escape \\{nxt} means different things in Python and Rust")
            out.append(ch + nxt)
            i += 2
            continue
        if in_class:
            if ch == "[" or pattern.startswith(("&&", "--", "~~"), i):
                raise Unsupported("nested or set-operation character class")
            if ch == "]":
                in_class = False
            out.append(ch)
        elif ch == "[":
            in_class = True
            out.append(ch)
            if pattern.startswith("[^]", i) or pattern.startswith("[]", i):
                raise Unsupported("a class starting with ']'")
        elif ch == "(" and pattern.startswith("(?", i) and not pattern.startswith("(?:", i):
            raise Unsupported("inline flags, look-arounds or named groups")
        elif ch == "$":
            out.append(r"(?:\n?\z)")
        else:
            out.append(ch)
        i += 1
    if in_class:
        raise Unsupported("unterminated character class")
    try:
        re.compile(pattern)
        pl.select(pl.lit("").str.contains("(?:" + "".join(out) + ")"))
    except Exception as e:  # GX would fail on it, or Rust cannot read it
        raise Unsupported(f"regex {pattern!r}: {e}") from e
    return "".join(out)


def _column_map(i: int, spec: ExpectationSpec, schema: pl.Schema, cond: pl.Expr | None) -> _Plan:
    """Expectations on one column's values: GX's ColumnMapExpectation, nulls out of the denominator."""
    kw, t = spec.kwargs, spec.type
    col = kw.get("column")
    dtype = _need(schema, col, None, "")
    mostly = _mostly(kw)
    present = _present(col, dtype)
    c = pl.col(col)
    if t == "expect_column_values_to_be_in_set":
        values = kw.get("value_set")
        if not isinstance(values, (list, tuple, set, frozenset)):
            raise Unsupported("value_set is not a list")
        values = list(values)
        if isinstance(dtype, _TEXT) and all(isinstance(v, str) for v in values):
            if cond is None:
                return _text_map_by_runs(i, col, present, mostly, lambda v: ~v.cast(pl.String).is_in(values))
            bad = ~_text(col).is_in(values)
        elif dtype == pl.Boolean and all(isinstance(v, bool) for v in values):
            bad = ~c.is_in(values)
        elif (dtype.is_integer() or dtype.is_float()) and all(_number(v) for v in values):
            bad = ~c.cast(pl.Float64).is_in([float(v) for v in values])
        else:
            raise Unsupported(f"value_set {values!r} against a {dtype} column")
    elif t == "expect_column_values_to_be_between":
        if not (dtype.is_integer() or dtype.is_float()):
            raise Unsupported(f"range on a {dtype} column")
        _range(kw)
        bad = ~_in_range(c, kw)
    elif t == "expect_column_values_to_match_regex":
        _need(schema, col, (pl.String,), "text")
        regex = kw.get("regex")
        if not isinstance(regex, str):
            raise Unsupported("regex is not a string")
        pattern = rust_regex(regex)
        if cond is None:
            return _text_map_by_runs(i, col, present, mostly, lambda v: ~v.str.contains(pattern))
        bad = ~c.str.contains(pattern)
    elif t == "expect_column_value_lengths_to_be_between":
        _need(schema, col, _TEXT, "text")
        _range(kw)
        if any(v is not None and not isinstance(v, int) for v in (kw.get("min_value"), kw.get("max_value"))):
            raise Unsupported("length bounds must be integers")
        bad = ~_in_range(_text(col).str.len_chars(), kw)
    elif t == "expect_column_values_to_be_increasing":
        if not (dtype.is_integer() or dtype.is_float() or isinstance(dtype, pl.Datetime)) or dtype == pl.UInt64:
            raise Unsupported(f"increasing on a {dtype} column")
        strictly = kw.get("strictly") or False
        if not isinstance(strictly, bool):
            raise Unsupported("strictly must be true or false")
        return _increasing(i, col, dtype, present, cond, strictly, mostly, schema)
    else:  # not null
        return _not_null(i, col, present, cond, mostly)
    keep = present if cond is None else cond & present
    bad = bad.fill_null(False)
    return _map_plan(i, col, present, cond, mostly, (keep & bad).sum(), _first(c.filter(keep & bad), i))


def _text_map_by_runs(i: int, col: str, present: pl.Expr, mostly: float,
                      bad_of: Callable[[pl.Expr], pl.Expr]) -> _Plan:
    """A column-map expectation on text, its test (``bad_of``) run once per run of equal values, not per row.

    A curated table is sorted by sensor, entity and time, so its text
    columns come in long runs of one value (a 2.5 M-row part holds a dozen
    entities): the regex on a machine id, matched row by row, took 19.4 ms
    of an 837,000-row run, 2.3 ms by runs (docs/performance.md). The counts
    and the first unexpected values, in row order, are those of the rows:
    each run stands for its length. On rows in no particular order the runs
    are the rows, and the result is the same.
    """
    runs = pl.col(col).rle()
    value, n = runs.struct.field("value"), runs.struct.field("len")
    bad = (value.is_not_null() & bad_of(value)).fill_null(False)
    unexpected = (n.cast(pl.Int64) * bad.cast(pl.Int64)).sum()
    sample = value.filter(bad).repeat_by(n.filter(bad)).explode().head(PARTIAL_UNEXPECTED_COUNT).implode()
    return _map_plan(i, col, present, None, mostly, unexpected, sample.alias(f"{i}:sample"))


def _map_plan(i: int, col: str, present: pl.Expr, cond: pl.Expr | None, mostly: float, unexpected: pl.Expr,
              sample: pl.Expr) -> _Plan:
    """A column-map expectation's plan: element, missing and ``unexpected`` counts, GX's verdict over the non-missing."""
    n, miss, unx = f"{i}:n", f"{i}:missing", f"{i}:unexpected"

    def finish(row: dict[str, Any], partial: list[Any]) -> dict[str, Any]:
        element, nonnull, bad = row[n], row[n] - row[miss], row[unx]
        ok = True if element == 0 or nonnull == 0 else _mostly_success(nonnull, bad, mostly)
        return _map_output(ok, element, nonnull, bad, partial)

    return _Plan(
        aggs=[_count(cond).alias(n), (~present if cond is None else cond & ~present).sum().alias(miss),
              unexpected.alias(unx), sample],
        finish=finish,
        values=lambda got, floated: _values(got, col, floated),
    )


def _first(unexpected: pl.Expr, i: int) -> pl.Expr:
    """The first unexpected values, as many as GX keeps, in row order: one list in the aggregate row."""
    return unexpected.head(PARTIAL_UNEXPECTED_COUNT).implode().alias(f"{i}:sample")


def _count(cond: pl.Expr | None) -> pl.Expr:
    return pl.len() if cond is None else cond.sum()


def _not_null(i: int, col: str, present: pl.Expr, cond: pl.Expr | None, mostly: float) -> _Plan:
    """GX's not-null: the nulls are the unexpected values, over all rows, and no missing count."""
    n, unx = f"{i}:n", f"{i}:unexpected"

    def finish(row: dict[str, Any], partial: list[Any]) -> dict[str, Any]:
        total, unexpected = row[n], row[unx]
        ok = True if total == 0 else (total - unexpected) / total >= mostly
        # every unexpected value is a null (None, NaN or NaT in pandas: JSON null)
        return _map_output(ok, total, None, unexpected, [None] * min(unexpected, PARTIAL_UNEXPECTED_COUNT))

    bad = ~present if cond is None else cond & ~present
    return _Plan(aggs=[_count(cond).alias(n), bad.sum().alias(unx)], finish=finish)


def _increasing(i: int, col: str, dtype: pl.DataType, present: pl.Expr, cond: pl.Expr | None, strictly: bool,
                mostly: float, schema: pl.Schema) -> _Plan:
    """GX's increasing: each non-missing value against the previous non-missing one (the first gets a bye)."""
    keep = present if cond is None else cond & present
    c = pl.col(col).to_physical() if isinstance(dtype, pl.Datetime) else pl.col(col).cast(pl.Float64)

    def in_order(values: pl.Expr) -> pl.Expr:
        # pandas: diff > 0 (>= 0), or a null diff (the first value; inf - inf gives NaN)
        diff = values.diff()
        ok = (diff > 0 if strictly else diff >= 0) | diff.is_null()
        return ok | diff.is_nan() if dtype.is_float() else ok

    return _map_plan(i, col, present, cond, mostly, (~in_order(c.filter(keep))).sum(),
                     _first(pl.col(col).filter(keep).filter(~in_order(c.filter(keep))), i))


def _pair(i: int, spec: ExpectationSpec, schema: pl.Schema, cond: pl.Expr | None) -> _Plan:
    """GX's column pair equality; ``ignore_row_if`` drops rows before counting, the rest are compared."""
    kw = spec.kwargs
    a, b = kw.get("column_A"), kw.get("column_B")
    da, db = _need(schema, a, None, ""), _need(schema, b, None, "")
    mostly = _mostly(kw)
    kinds = [("text" if isinstance(d, _TEXT) else "int" if d.is_integer() else "bool" if d == pl.Boolean else None)
             for d in (da, db)]
    if kinds[0] is None or kinds[0] != kinds[1]:
        raise Unsupported(f"pair of {da} and {db} columns")
    ea, eb = (_text(a), _text(b)) if kinds[0] == "text" else (pl.col(a), pl.col(b))
    how = kw.get("ignore_row_if", "both_values_are_missing")
    if how == "both_values_are_missing":
        drop = ea.is_null() & eb.is_null()
    elif how == "either_value_is_missing":
        drop = ea.is_null() | eb.is_null()
    elif how == "neither":
        drop = pl.lit(False)
    else:
        raise Unsupported(f"ignore_row_if={how!r}")
    keep = ~drop if cond is None else cond & ~drop
    bad = ~(ea == eb).fill_null(False)  # a missing value equals nothing, as in pandas
    n, kept, unx = f"{i}:n", f"{i}:kept", f"{i}:unexpected"

    def finish(row: dict[str, Any], partial: list[Any]) -> dict[str, Any]:
        element, filtered, unexpected = row[n], row[kept], row[unx]
        ok = True if element == 0 or filtered == 0 else _mostly_success(filtered, unexpected, mostly)
        return _map_output(ok, element, filtered, unexpected, partial)

    return _Plan(
        aggs=[_count(cond).alias(n), keep.sum().alias(kept), (keep & bad).sum().alias(unx),
              _first(pl.struct(a, b).filter(keep & bad), i)],
        finish=finish,
        values=lambda got, floated: [(_value(r[a], a, floated), _value(r[b], b, floated)) for r in got],
    )


def _compound(i: int, spec: ExpectationSpec, schema: pl.Schema, cond: pl.Expr | None) -> _Plan:
    """GX's compound uniqueness: every row of a repeated key is unexpected (pandas ``duplicated(keep=False)``)."""
    kw = spec.kwargs
    cols = kw.get("column_list")
    if not isinstance(cols, list) or len(cols) < 2 or len(set(cols)) != len(cols):
        raise Unsupported("column_list must name two or more distinct columns")
    dtypes = [_need(schema, c, None, "") for c in cols]
    if any(d.is_float() or d.is_nested() for d in dtypes):
        raise Unsupported("float or nested key columns (NaN and nested equality differ)")
    mostly = _mostly(kw)
    missing = [pl.col(c).is_null() for c in cols]
    how = kw.get("ignore_row_if", "all_values_are_missing")
    if how == "all_values_are_missing":
        drop = pl.all_horizontal(missing)
    elif how == "any_value_is_missing":
        drop = pl.any_horizontal(missing)
    elif how == "never":
        drop = pl.repeat(False, pl.len())  # a column, not a scalar: its sum counts the rows kept
    else:
        raise Unsupported(f"ignore_row_if={how!r}")
    keep = ~drop if cond is None else cond & ~drop
    key = pl.struct(cols)
    temporal = {c for c, d in zip(cols, dtypes, strict=True) if d.is_temporal()}

    n, kept, unx = f"{i}:n", f"{i}:kept", f"{i}:unexpected"

    def finish(row: dict[str, Any], partial: list[Any]) -> dict[str, Any]:
        element, filtered, unexpected = row[n], row[kept], row[unx]
        ok = True if element == 0 or filtered == 0 else _mostly_success(filtered, unexpected, mostly)
        return _map_output(ok, element, filtered, unexpected, partial)

    repeated = pl.col(f"{i}:repeated")  # every kept row of a repeated key
    return _Plan(
        columns={f"{i}:repeated": _repeated_keys(cols, dtypes, keep)},
        aggs=[_count(cond).alias(n), keep.sum().alias(kept), repeated.sum().alias(unx),
              _first(key.filter(repeated), i)],
        finish=finish,
        # pandas holds a missing time as NaT, which GX lists as "NaT"
        values=lambda got, floated: [{c: "NaT" if r[c] is None and c in temporal else _value(r[c], c, floated) for c in cols}
                                     for r in got],
    )


def _repeated_keys(cols: list[str], dtypes: list[pl.DataType], keep: pl.Expr) -> pl.Expr:
    """Whether each row is kept and shares its key (``cols``) with another kept row.

    A key of a time series names a series (entity, sensor: few values) and
    a time (nearly one per row). Hashing the three columns of every row as
    one struct (``is_duplicated`` of the struct) was nearly all of a 10 M-row
    suite's time (1.07 s of 1.1 s on two cores); the same rows are found by
    looking for repeated times within each series (0.42-0.51 s), as every
    row of a repeated key repeats its time within its series. Rows not
    kept form groups of their own and are never counted. A key without one
    temporal or integer column keeps the struct.
    """
    ordered = [k for k, d in enumerate(dtypes) if d.is_temporal()] or [k for k, d in enumerate(dtypes) if d.is_integer()]
    if not ordered:
        return keep & pl.struct(cols).is_duplicated().over(keep)
    inner = cols[ordered[0]]
    outer = [c for c in cols if c != inner]
    return keep & pl.col(inner).is_duplicated().over([*outer, keep])


def _adjacent_repeats(cols: list[str]) -> pl.Expr:
    """Whether each row shares its key with a neighbour: every repeated key, where equal keys are next to each other.

    Only for rows without a null in ``cols`` (``evaluate``'s ``grouped_by``):
    every row is then kept, whatever ``ignore_row_if`` says, and a row
    condition's filter keeps equal keys next to each other. On a curated
    part this replaced the window of :func:`_repeated_keys`, most of the
    suite's time on a 10 M-row delivery (docs/performance.md).
    """
    same = pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in cols]).fill_null(False)
    return same | same.shift(-1).fill_null(False)


def _row_count(i: int, spec: ExpectationSpec, schema: pl.Schema, cond: pl.Expr | None) -> _Plan:
    kw = spec.kwargs
    _range(kw)
    n = f"{i}:n"
    return _Plan(aggs=[_count(cond).alias(n)],
                 finish=lambda row, _: {"success": _between(row[n], kw), "result": {"observed_value": row[n]}})


def _columns(i: int, spec: ExpectationSpec, schema: pl.Schema, cond: pl.Expr | None) -> _Plan:
    """GX's column set check (pandas): sorted names, ``details.mismatched`` only on a mismatch."""
    kw = spec.kwargs
    expected_list = kw.get("column_set")
    exact = kw.get("exact_match", True)
    if not isinstance(expected_list, list) or not all(isinstance(c, str) for c in expected_list) or not isinstance(exact, bool):
        raise Unsupported("column_set must be a list of names and exact_match true or false")
    actual, expected = set(schema), set(expected_list)
    observed = sorted(actual)
    unexpected, missing = sorted(actual - expected), sorted(expected - actual)
    if not unexpected and not missing:
        out: dict[str, Any] = {"success": True, "result": {"observed_value": observed}}
    else:
        mismatched: dict[str, Any] = {}
        if unexpected:
            mismatched["unexpected"] = unexpected
        if missing:
            mismatched["missing"] = missing
        out = {"success": not exact and not missing,
               "result": {"observed_value": observed, "details": {"mismatched": mismatched}}}
    return _Plan(aggs=[], finish=lambda row, _: out)


def _mean(i: int, spec: ExpectationSpec, schema: pl.Schema, cond: pl.Expr | None) -> _Plan:
    """GX's column mean: pandas' ``Series.mean()``, reproduced on the same numbers in the same order.

    pandas sums with numpy (pairwise, NaN set to 0) and divides by the count;
    Polars sums in another order, which can change the last bits. The column
    (after the row condition) is therefore read once more and summed by numpy
    exactly as pandas does, so observed values match to the bit.
    """
    kw = spec.kwargs
    col = kw.get("column")
    dtype = _need(schema, col, None, "")
    if not (dtype.is_float() and dtype == pl.Float64) and not isinstance(dtype, _INTEGER):
        raise Unsupported(f"mean of a {dtype} column")
    _range(kw)
    nulls = f"{i}:nulls"

    def extra(lf: pl.LazyFrame) -> Any:
        return (lf if cond is None else lf.filter(cond)).select(col).collect().get_column(col)

    def finish(row: dict[str, Any], extra_value: Any) -> dict[str, Any]:
        mean = _pandas_mean(extra_value, as_float=dtype.is_float() or row[nulls] > 0)
        if mean is None:
            return {"success": False, "result": {"observed_value": None}}
        return {"success": _between(mean, kw), "result": {"observed_value": mean}}

    return _Plan(aggs=[pl.col(col).null_count().alias(nulls)], finish=finish, extra=extra)


def _pandas_mean(series: pl.Series, *, as_float: bool) -> float | None:
    """``pandas.Series.mean()`` (``nanops.nanmean``) of the column pandas would hold: None for no value.

    An integer column with a null anywhere is float64 in pandas (NaN for the nulls).
    """
    if as_float:
        values = series.cast(pl.Float64).fill_null(float("nan")).to_numpy().copy()
        mask = np.isnan(values)
        if mask.any():
            np.putmask(values, mask, 0)
        count = float(mask.size - mask.sum())
    else:
        values = series.cast(pl.Int64).to_numpy()
        count = float(values.size)
    if count == 0:
        return None
    mean = float(values.sum(dtype=np.float64) / np.float64(count))
    return None if math.isnan(mean) else mean


def _value(v: Any, col: str, floated: frozenset[str]) -> Any:
    """A value as GX lists it: an integer column holding nulls (``floated``) is float64 in pandas."""
    return float(v) if col in floated and v is not None else v


def _values(got: list[Any], col: str, floated: frozenset[str]) -> list[Any]:
    return [_value(v, col, floated) for v in got]


PLANNERS: dict[str, Callable[[int, ExpectationSpec, pl.Schema, pl.Expr | None], _Plan]] = {
    "expect_column_values_to_be_in_set": _column_map,
    "expect_column_values_to_not_be_null": _column_map,
    "expect_column_values_to_be_between": _column_map,
    "expect_column_values_to_match_regex": _column_map,
    "expect_column_value_lengths_to_be_between": _column_map,
    "expect_column_values_to_be_increasing": _column_map,
    "expect_column_pair_values_to_be_equal": _pair,
    "expect_compound_columns_to_be_unique": _compound,
    "expect_column_mean_to_be_between": _mean,
    "expect_table_row_count_to_be_between": _row_count,
    "expect_table_columns_to_match_set": _columns,
}
# The types whose every metric is computed on the rows of their condition alone, so that
# evaluate() may filter those rows once for all the expectations that share it. Not the mean,
# whose pandas dtype depends on the nulls of the whole column; the column set has no rows.
_ON_ITS_ROWS = SUPPORTED - {"expect_column_mean_to_be_between", "expect_table_columns_to_match_set"}


# --------------------------------------------------------------------------
# running


def scan(frame: pl.DataFrame | pl.LazyFrame | Path | str) -> pl.LazyFrame:
    """The curated table as a LazyFrame: a scan of its Parquet file (or directory of files), not a read."""
    if isinstance(frame, pl.LazyFrame):
        return frame
    if isinstance(frame, pl.DataFrame):
        return frame.lazy()
    if isinstance(frame, (str, Path)):
        path = Path(frame)
        if not path.exists():
            raise FileNotFoundError(f"no curated table at {path}")
        if path.is_dir():
            return pl.scan_parquet(path / "**" / "*.parquet")
        if path.suffix == ".parquet":
            return pl.scan_parquet(path)
        raise ValueError(f"{path}: expected a Parquet file or a directory of Parquet files")
    raise TypeError(f"expected a polars DataFrame, LazyFrame or a path, got {type(frame).__name__}")


def _plan(i: int, spec: ExpectationSpec, schema: pl.Schema) -> _Plan:
    if spec.type not in KWARGS:
        raise Unsupported(f"{spec.type} is not evaluated by the fast path")
    extra = set(spec.kwargs) - KWARGS[spec.type]
    if extra:
        raise Unsupported(f"keyword(s) {sorted(extra)}")
    where = _condition_key(spec.kwargs, schema)
    for key in ("column", "column_A", "column_B"):
        if key in spec.kwargs:
            _listable(schema, spec.kwargs[key])
    for c in spec.kwargs.get("column_list") or []:
        _listable(schema, c)
    if where is not None and spec.type in _ON_ITS_ROWS:
        # GX filters the rows first and computes every metric on them: so does evaluate(), once per condition.
        return replace(PLANNERS[spec.type](i, spec, schema, None), where=where)
    return PLANNERS[spec.type](i, spec, schema, None if where is None else _rows_where(where))


def _listable(schema: pl.Schema, col: Any) -> None:
    """Columns whose values both engines list alike (dates, durations, ns timestamps read differently in pandas)."""
    dtype = _need(schema, col, None, "")
    ok = (isinstance(dtype, _TEXT) or dtype == pl.Boolean or dtype.is_integer() or dtype.is_float()
          or (isinstance(dtype, pl.Datetime) and dtype.time_unit in ("us", "ms")))
    if not ok:
        raise Unsupported(f"column {col!r} is {dtype}")


def may_evaluate(specs: list[ExpectationSpec]) -> bool:
    """Whether the fast path can take the suite as far as its text tells (types, keywords, conditions).

    Before the table exists (the curated asset starts GX's import while it
    curates, to hide the import): the columns and their types are checked
    by :func:`unsupported` once there is a table.
    """
    for spec in specs:
        kw = spec.kwargs
        if spec.type not in KWARGS or set(kw) - KWARGS[spec.type]:
            return False
        rc = kw.get("row_condition")
        if rc is not None and (not isinstance(rc, str) or not _EQ_CONDITION.match(rc)
                               or kw.get("condition_parser") not in (None, "pandas")):
            return False
    return True


def plans(specs: list[ExpectationSpec], schema: pl.Schema,
          indexes: list[int] | None = None) -> tuple[dict[int, _Plan], list[str]]:
    """The plan of each expectation (or of those at ``indexes``) on a table of ``schema``, and why any has none.

    Validation plans a suite once: the plans that tell it whether this path
    can take the suite are the ones it hands to :func:`evaluate` (planning
    took 5 ms a delivery in a profile of 200 small deliveries, about as long
    as evaluating a 10,000-row one).
    """
    which = range(len(specs)) if indexes is None else indexes
    # A plan is a function of the expectation's place, type and keywords and of the
    # table's schema only, so a contract's deliveries share their suite's plans.
    key = (tuple((i, specs[i].type, json.dumps(specs[i].kwargs, sort_keys=True, default=repr)) for i in which),
           tuple(schema.items()))
    got = _PLANNED.get(key)
    if got is None:
        out: dict[int, _Plan] = {}
        problems = []
        for i in which:
            try:
                out[i] = _plan(i, specs[i], schema)
            except Unsupported as e:
                problems.append(f"[{i}] {specs[i].type}: {e}")
        got = (out, problems)
        with _PLANNED_LOCK:  # (the service validates on a thread pool)
            _PLANNED[key] = got
            while len(_PLANNED) > PLANS_KEPT:
                del _PLANNED[next(iter(_PLANNED))]
    out, problems = got
    return dict(out), [_named(p, specs) for p in problems]


# Suites whose plans are kept (oldest dropped first): a lab validates a handful of contracts
# over and over, and planning cmapss-fd001's 81 expectations took 4.5 ms a delivery.
PLANS_KEPT = 64
_PLANNED: dict[tuple[Any, ...], tuple[dict[int, _Plan], list[str]]] = {}
_PLANNED_LOCK = threading.Lock()


def _named(problem: str, specs: list[ExpectationSpec]) -> str:
    """A cached problem ``[i] type: why`` with the expectation's source, as this suite names it."""
    i = int(problem[1:problem.index("]")])
    head, why = problem.split(": ", 1)
    return f"{head} ({specs[i].source}): {why}"


def unsupported(specs: list[ExpectationSpec], schema: pl.Schema) -> list[str]:
    """Why the fast path cannot evaluate a suite as GX would: one line per expectation it cannot do (empty: it can)."""
    return plans(specs, schema)[1]


def evaluate(specs: list[ExpectationSpec], frame: pl.DataFrame | pl.LazyFrame | Path | str,
             indexes: list[int] | None = None,
             record_as: list[ExpectationSpec] | None = None,
             planned: dict[int, _Plan] | None = None,
             grouped_by: frozenset[str] = frozenset()) -> tuple[list[ExpectationResult], int]:
    """Results of ``specs`` (or those at ``indexes``) on the table, as GX would give them, and its row count.

    ``planned``: :func:`plans`' plans of these specs on this table's schema, if already made.
    ``grouped_by``: the caller knows the rows of ``frame`` (a DataFrame) with equal values of these
    columns to be next to each other (a curated part is sorted so): a compound key of exactly
    these columns, none of them holding a null, is then checked by comparing neighbours
    (:func:`_adjacent_repeats`) instead of by a hash of every row.
    ``record_as``: the suite's specs the results are reported under, where
    ``specs`` were rewritten for a chunk (its sensor's condition dropped), as
    the GX chunks report under the suite's own expectations.

    One aggregate query over the table (and one over the rows of each row
    condition) computes every count and the first PARTIAL_UNEXPECTED_COUNT
    unexpected values of each expectation (in row order, as GX lists them);
    a mean reads its column once more. Raises
    :class:`Unsupported` naming every expectation it cannot evaluate.
    """
    lf = scan(frame)
    schema = lf.collect_schema()
    if planned is None:
        planned, problems = plans(specs, schema, None if indexes is None else list(indexes))
        if problems:
            raise Unsupported("; ".join(problems))
    if grouped_by and isinstance(frame, pl.DataFrame) and not any(frame.get_column(c).null_count() for c in grouped_by):
        for i, p in planned.items():
            cols = (specs[i].kwargs.get("column_list") or []) if specs[i].type == "expect_compound_columns_to_be_unique" else []
            if cols and set(cols) == grouped_by and f"{i}:repeated" in p.columns:
                planned[i] = replace(p, columns={f"{i}:repeated": _adjacent_repeats(cols)})
    ints = [c for c, d in schema.items() if d.is_integer()]
    # One aggregate query over every row, and one over the rows of each row condition (a suite
    # conditions most expectations on one sensor: 72 of 81 in cmapss-fd001's). Filtering each
    # sensor's rows once, rather than every expectation masking every row, halved the suite's
    # time on a 240,000-row delivery of 24 sensors (57 to 33 ms; 0.49-0.62 to 0.24-0.30 s at 1.9 M
    # rows, from the file). collect_all runs the queries together.
    by_rows: dict[tuple[str, str] | None, list[pl.Expr]] = {
        None: [pl.len().alias("rows"), *(pl.col(c).null_count().alias(f"nulls:{c}") for c in ints)]}
    first: dict[tuple[str, str] | None, dict[str, pl.Expr]] = {}
    for p in planned.values():
        by_rows.setdefault(p.where, []).extend(p.aggs)
        first.setdefault(p.where, {}).update(p.columns)
    queries = []
    for where, aggs in by_rows.items():
        if not aggs:
            continue
        rows = lf if where is None else lf.filter(_rows_where(where))
        queries.append((rows.with_columns(**first[where]) if first.get(where) else rows).select(aggs))
    row: dict[str, Any] = {}
    for part in pl.collect_all(queries):
        row.update(part.row(0, named=True))
    floated = frozenset(c for c in ints if row[f"nulls:{c}"] > 0)
    partial: dict[int, Any] = {i: p.values(list(row[f"{i}:sample"] or []), floated)
                               for i, p in planned.items() if p.values is not None}
    for i, p in planned.items():
        if p.extra is not None:
            partial[i] = p.extra(lf)
    results = []
    for i, p in planned.items():
        out = p.finish(row, partial.get(i, []))
        results.append(record((record_as or specs)[i], i, out["success"], out["result"]))
    return results, int(row["rows"])
