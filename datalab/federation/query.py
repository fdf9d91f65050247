"""Compute-to-data: a declared aggregation run at the provider site, small groups suppressed.

Where data may not move (residency, or a policy that keeps it home) a peer
can still ask a question, but only a declared one: group by a few columns
(a datetime column only through a time bucket), aggregate with
``count()``, ``mean``, ``sum`` or ``std`` of numeric columns. No free code,
no ``min``/``max`` (each is one row's value). Groups with fewer than k rows
(k from the version's policy, ``min_group_rows``, default 10) are dropped
and counted; a time bucket narrower than the data's own resolution
suppresses every group, since such a bucket only re-labels single readings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from datalab.config import Settings, settings
from datalab.errors import DatalabError
from datalab.store.manifest import Manifest
from datalab.store.storage import store

DEFAULT_K = 10
MAX_GROUP_COLS = 4
AGGS = ("count", "mean", "sum", "std")
_AGG = re.compile(r"^\s*(count|mean|sum|std|min|max|median)\(\s*([A-Za-z0-9_]*)\s*\)\s*$")
_BUCKET = re.compile(r"^([A-Za-z0-9_]+):(\d+)(ms|s|m|h|d)$")
_UNIT_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


class QueryRefused(DatalabError):
    """A query that is not a declared aggregation (names the part that is not)."""


@dataclass(frozen=True)
class Query:
    group_by: tuple[str, ...]
    aggs: tuple[tuple[str, str], ...]  # (function, column); count has column ""

    def to_dict(self) -> dict[str, Any]:
        return {"group_by": list(self.group_by), "aggs": [f"{f}({c})" for f, c in self.aggs]}


def parse(group_by: list[str] | str, aggs: list[str] | str) -> Query:
    """A Query from ``--group-by a,b:1h`` and ``--agg "mean(value),count()"``; QueryRefused with the reason."""
    gb = [g.strip() for g in (group_by.split(",") if isinstance(group_by, str) else group_by) if g.strip()]
    raw = [a for a in (re.split(r",(?![^(]*\))", aggs) if isinstance(aggs, str) else aggs) if a.strip()]
    if len(gb) > MAX_GROUP_COLS:
        raise QueryRefused(f"at most {MAX_GROUP_COLS} group-by columns, got {len(gb)}")
    if not raw:
        raise QueryRefused("declare at least one aggregation, e.g. --agg \"mean(value),count()\"")
    out = []
    for a in raw:
        m = _AGG.match(a)
        if not m:
            raise QueryRefused(f"{a.strip()[:60]!r} is not a declared aggregation (one of {', '.join(f + '(col)' for f in AGGS)})")
        fn, col = m.groups()
        if fn not in AGGS:
            raise QueryRefused(f"{fn}() returns a single row's value; declared aggregations are {', '.join(AGGS)}")
        if (fn == "count") != (col == ""):
            raise QueryRefused(f"{a.strip()}: count() takes no column, {fn}() takes one")
        out.append((fn, col))
    return Query(tuple(gb), tuple(out))


def run(m: Manifest, q: Query, s: Settings | None = None) -> dict[str, Any]:
    """Run ``q`` over the version of manifest ``m``; groups under k suppressed; the answer and its hash."""
    s = s or settings()
    k = int(m.policy.get("min_group_rows") or DEFAULT_K)
    schema = {c: str(t) for c, t in m.schema.items()}
    lf = store(s).scan_parquet([f.path for f in m.files]) if m.files else pl.LazyFrame()
    keys, too_fine = [], []
    for g in q.group_by:
        b = _BUCKET.match(g)
        col = b.group(1) if b else g
        if col not in schema:
            raise QueryRefused(f"group-by column {col!r} is not in {m.ref} (columns: {', '.join(schema)})")
        is_time = schema[col].startswith(("Datetime", "Date"))
        if is_time and not b:
            raise QueryRefused(f"group by the datetime column {col!r} through a time bucket, e.g. {col}:1h")
        if b and not is_time:
            raise QueryRefused(f"{g}: a time bucket needs a datetime column, {col!r} is {schema[col]}")
        if b:
            every_us = int(b.group(2)) * _UNIT_US[b.group(3)]
            if every_us <= 0:
                raise QueryRefused(f"{g}: the bucket must be positive")
            res = _resolution_us(lf, col)
            if res is not None and every_us < res:
                too_fine.append(f"{g} is narrower than the data's resolution ({res / 1e6:g} s)")
            keys.append(pl.col(col).dt.truncate(f"{b.group(2)}{b.group(3)}").alias(g))
        else:
            keys.append(pl.col(col).alias(g))
    exprs = [pl.len().alias("count()")]
    for fn, col in q.aggs:
        if fn == "count":
            continue
        if col not in schema:
            raise QueryRefused(f"aggregation column {col!r} is not in the version")
        if not schema[col].startswith(("Float", "Int", "UInt", "Decimal")):
            raise QueryRefused(f"{fn}({col}): {col!r} is {schema[col]}, not numeric")
        exprs.append(getattr(pl.col(col), fn)().alias(f"{fn}({col})"))
    df = (lf.group_by(keys).agg(exprs) if keys else lf.select(exprs)).collect()
    small = df.filter(pl.col("count()") < k) if not too_fine else df
    kept = df.filter(pl.col("count()") >= k) if not too_fine else df.clear()
    if keys:
        kept = kept.sort(list(q.group_by))
    wanted = list(q.group_by) + [f"{f}({c})" for f, c in q.aggs]
    rows = [{c: _jsonable(r[c]) for c in wanted} for r in kept.to_dicts()]
    answer = {"dataset": m.dataset, "version": m.version, "query": q.to_dict(), "k": k,
              "groups": rows, "suppressed_groups": small.height,
              "why_suppressed": "; ".join(too_fine) or (f"groups with fewer than {k} rows" if small.height else ""),
              "rows_scanned": int(df["count()"].sum() or 0) if df.height else 0}
    answer["result_sha256"] = hashlib.sha256(json.dumps(answer["groups"], sort_keys=True).encode()).hexdigest()
    return answer


def _resolution_us(lf: pl.LazyFrame, col: str) -> int | None:
    """The smallest positive step between distinct values of ``col`` (µs): the data's time resolution."""
    d = lf.select(pl.col(col).unique().sort().diff().dt.total_microseconds().alias("d")).collect()["d"]
    d = d.filter(d > 0)
    return int(d.min()) if d.len() else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return v
