"""Validating a large curated table in chunks, and merging the chunks' results.

Great Expectations' pandas engine holds the whole batch in memory and, for
every expectation with a row condition (the suite has one per sensor and
rule), copies the rows it selects, and on a large batch most of a suite's
time goes into that copying (measured in docs/performance.md, "Why the code
is as it is"). A curated partition larger than ``chunk_rows`` is therefore
validated in chunks that each hold one sensor (and, for large sensors, one
hash bucket of entities), so memory is bounded by the chunk and a sensor's
expectations copy only that sensor's rows.

Merging is exact for the expectations the lab derives: column-map
expectations (counts add up, ``mostly`` is applied to the totals),
uniqueness over keys that include entity and sensor (duplicates never span
chunks), row counts (observed counts add up) and the column set (the same
in every chunk). A suite holding any other kind runs unchunked.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from datalab.quality.results import ExpectationResult

MERGEABLE_TABLE = {"expect_table_columns_to_match_set", "expect_table_row_count_to_be_between"}
SAMPLES = 5


def mergeable(spec_type: str, kwargs: dict[str, Any]) -> bool:
    """Can per-chunk results of this expectation be merged exactly?"""
    if spec_type in MERGEABLE_TABLE:
        return True
    if spec_type == "expect_compound_columns_to_be_unique":
        return {"entity", "sensor"} <= set(kwargs.get("column_list") or [])
    if spec_type == "expect_column_values_to_be_unique":
        return False
    return spec_type.startswith("expect_column_values_to_") or spec_type.startswith("expect_column_pair_values_")


_SENSOR_EQ = re.compile(r"""^\s*sensor\s*==\s*(["'])(.*)\1\s*$""")


@dataclass(frozen=True)
class Chunk:
    """The rows of one chunk (a filter) and the one sensor they all have (None: null sensor)."""

    filter: pl.Expr
    sensor: str | None


def splittable_by_time(specs: list[Any]) -> bool:
    """Whether a series may be cut into time ranges: every key uniqueness the suite checks includes ``time``.

    Rows with the same (entity, time, sensor) lie in the same time range, so
    such a key's duplicates never span two chunks; a key without ``time``
    could repeat in two ranges of one series.
    """
    return all("time" in (sp.kwargs.get("column_list") or []) for sp in specs
               if sp.type == "expect_compound_columns_to_be_unique")


def plan_chunks(path: Path, chunk_rows: int, by_time: bool = False) -> list[Chunk] | None:
    """The chunks of a curated file, or None when the table fits one chunk.

    One chunk per sensor; a sensor with more than ``chunk_rows`` rows is split
    further by a hash of the entity, so every (entity, sensor) series lies in
    exactly one of those chunks. With ``by_time`` (:func:`splittable_by_time`),
    a series itself longer than ``chunk_rows`` is cut into time ranges of
    about ``chunk_rows`` rows instead: a chunk's memory is then bounded even
    where one machine's series is most of the delivery (a 200 M-row delivery
    of 12 series held 16.7 M rows per chunk, and validation peaked at 6.5 GB).
    """
    lf = pl.scan_parquet(path)
    if lf.select(pl.len()).collect().item() <= chunk_rows:  # from the footer: a small delivery needs no pass
        return None
    names = lf.collect_schema().names()
    by_time = by_time and {"entity", "time"} <= set(names)
    if by_time:
        # streamed: in memory, the three columns of a 200 M-row file were 8 GB
        series = lf.group_by("sensor", "entity").agg(n=pl.len(), lo=pl.col("time").min(), hi=pl.col("time").max()
                                                     ).collect(engine="streaming")
        counts = series.group_by("sensor").agg(n=pl.col("n").sum())
    else:
        counts = lf.group_by("sensor").agg(n=pl.len()).collect(engine="streaming")
    if counts.get_column("n").sum() <= chunk_rows:
        return None
    out: list[Chunk] = []
    for sensor, n in counts.sort("sensor", nulls_last=True).iter_rows():
        is_sensor = pl.col("sensor").is_null() if sensor is None else pl.col("sensor") == sensor
        parts = max(1, -(-n // chunk_rows))
        if parts == 1:
            out.append(Chunk(is_sensor, sensor))
            continue
        long = [] if not by_time else series.filter(
            is_sensor, pl.col("entity").is_not_null(), pl.col("lo").is_not_null(), pl.col("n") > chunk_rows,
        ).select("entity", "n", "lo", "hi").sort("entity").rows()  # group_by's order is not stable
        rest_rows = n - sum(en for _, en, *_ in long)
        if rest_rows > 0:  # the sensor's shorter series, by entity hash
            rest = is_sensor & ~pl.col("entity").is_in([e for e, *_ in long]).fill_null(False) if long else is_sensor
            k_rest = max(1, -(-rest_rows // chunk_rows))
            out += [Chunk(rest & ((pl.col("entity").hash(seed=0) % k_rest) == k), sensor) for k in range(k_rest)]
        for entity, en, lo, hi in long:
            out += [Chunk(is_sensor & (pl.col("entity") == entity) & r, sensor)
                    for r in time_ranges(lo, hi, -(-en // chunk_rows))]
    return out


def time_ranges(lo: Any, hi: Any, k: int) -> list[pl.Expr]:
    """``k`` filters that cut [lo, hi] into equal time ranges; null times go to the first, so every row has one."""
    if k <= 1 or lo == hi:
        return [pl.lit(True)]
    bounds = [lo + (hi - lo) * i // k if isinstance(lo, int) else lo + (hi - lo) * i / k for i in range(1, k)]
    t = pl.col("time")
    out = [(t < bounds[0]) | t.is_null()]
    out += [(t >= a) & (t < b) for a, b in itertools.pairwise(bounds)]
    out.append(t >= bounds[-1])
    return out


def condition_sensor(kwargs: dict[str, Any]) -> str | None:
    """The sensor of a ``sensor=="X"`` row condition, else None: labels results, and lets a chunk of that sensor drop it."""
    rc = kwargs.get("row_condition")
    m = _SENSOR_EQ.match(rc) if isinstance(rc, str) else None
    return m.group(2) if m else None


def chunk_suite(kwargs_list: list[dict[str, Any]], chunk: Chunk, sensors: set[str | None], first: bool) -> list[tuple[int, dict[str, Any]]]:
    """Which expectations a chunk runs, by suite index, with the kwargs to run them with.

    Every row of a chunk has the chunk's sensor. An expectation conditioned
    on ``sensor=="X"`` therefore selects all of the chunk's rows when X is
    the chunk's sensor: it runs without the condition (same counts, and GX
    no longer copies the rows for it); for any other sensor it selects no
    row and is skipped. Only a sensor that no chunk holds has its
    expectations run, as written, in the first chunk, so that GX itself
    says what an empty selection gives. Everything else runs as written.
    GX filtered rows per condition and metric, a large share of
    validation's time (measured in docs/performance.md).
    """
    out = []
    for i, kw in enumerate(kwargs_list):
        sensor = condition_sensor(kw)
        if sensor is None:
            out.append((i, kw))
        elif sensor == chunk.sensor:
            out.append((i, {k: v for k, v in kw.items() if k not in ("row_condition", "condition_parser")}))
        elif first and sensor not in sensors:
            out.append((i, kw))
    return out


SCHEMA_ONLY = frozenset({"expect_table_columns_to_match_set"})
"""The mergeable expectation that reads only the column names: a chunk runs it on an empty frame of the full schema."""

_COLUMN_KWARGS = ("column", "column_A", "column_B")


def columns_read(kwargs_list: list[dict[str, Any]], all_columns: list[str]) -> list[str]:
    """The columns a chunk's (non-schema) expectations read, in table order.

    GX's pandas engine copies the whole batch for nearly every column-map
    metric (``df[df[column].notnull()]``, then ``df[unexpected]``), so a
    batch of only the columns the suite reads copies only part of the data
    (the benchmark's share is in docs/performance.md). The set is exact for
    the kinds a chunked run allows (``mergeable``): their columns are named
    in ``column``, ``column_A``/``column_B`` or ``column_list``, and a row
    condition the lab writes names ``sensor``. Any other row condition reads all columns.
    A table-level expectation (row count) reads none; the batch then keeps
    the first column, so it still has the chunk's rows.
    """
    want: set[str] = set()
    for kw in kwargs_list:
        want.update(str(kw[k]) for k in _COLUMN_KWARGS if kw.get(k) is not None)
        want.update(str(c) for c in kw.get("column_list") or [])
        if kw.get("row_condition") is not None:
            if condition_sensor(kw) is None:
                return list(all_columns)
            want.add("sensor")
    if want - set(all_columns):
        return list(all_columns)  # GX reports the missing column, as on the whole table
    return [c for c in all_columns if c in want] or list(all_columns[:1])


def merge_by_index(results: list[ExpectationResult]) -> list[ExpectationResult]:
    """Merge the results of every chunk, each carrying its suite ``index``, into one per index."""
    groups: dict[int, list[ExpectationResult]] = {}
    for r in results:
        groups.setdefault(r.index, []).append(r)
    return [_merge_one(groups[i]) for i in sorted(groups)]


def merge(chunks: list[list[ExpectationResult]]) -> list[ExpectationResult]:
    """Merge per-chunk results (each list in suite order) into one list."""
    return [_merge_one(list(parts)) for parts in zip(*chunks, strict=True)]


def _merge_one(parts: list[ExpectationResult]) -> ExpectationResult:
    """One result from the same expectation's results on every chunk (its message is the caller's to rewrite).

    A result only one chunk gave is that chunk's, as GX gave it (e.g. a
    percentage of no rows is None there, where a merge of several says 0).
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    errors = [p.exception for p in parts if p.exception]
    if errors:
        return replace(first, exception=errors[0], success=False)
    if first.type == "expect_table_columns_to_match_set":
        return next((p for p in parts if not p.success), first)
    if first.type == "expect_table_row_count_to_be_between":
        total = sum(int(p.observed_value or 0) for p in parts)
        lo, hi = first.kwargs.get("min_value"), first.kwargs.get("max_value")
        return replace(first, observed_value=total, success=(lo is None or total >= lo) and (hi is None or total <= hi))
    element = sum(int(p.element_count or 0) for p in parts)
    unexpected = sum(int(p.unexpected_count or 0) for p in parts)
    missing_known = any(p.missing_count is not None for p in parts)
    missing = sum(int(p.missing_count or 0) for p in parts)
    denom = element - missing
    mostly = first.kwargs.get("mostly", 1.0)
    mostly = 1.0 if mostly is None else float(mostly)
    share_ok = 1.0 if denom <= 0 else (denom - unexpected) / denom
    samples: list[Any] = []
    for p in parts:
        for v in p.sample_values:
            if len(samples) < SAMPLES and v not in samples:
                samples.append(v)
    return replace(
        first,
        element_count=element,
        unexpected_count=unexpected,
        missing_count=missing if missing_known else None,
        unexpected_percent=(100.0 * unexpected / denom) if denom > 0 else 0.0,
        sample_values=tuple(samples),
        success=share_ok >= mostly - 1e-12,
    )
