"""Series longer than a curation bucket: cut by time, with their median and MAD found exactly.

Curation works on one series (entity, sensor) at a time, so a delivery is
curated in buckets of whole series (``curate.series_buckets``). A series
larger than a bucket used to be curated whole: its rows, about 230 bytes
each in the plan, all in memory at once. A month of one 1 kHz sensor is 2.6
billion readings; no machine holds that.

Every step of the plan but two works on rows that share a time: exact and
key duplicates share their key, conversions and flags are per row. So such a
series is cut into chunks of consecutive time (``time_chunks``), each at
most a bucket's rows, from one streaming pass that counts rows per time bin.
The two steps that need more than a chunk:

* the gap flag compares a row's time with the previous row's: each chunk is
  given the last time before it (``TimeChunk.before``), taken from the same
  pass;
* the robust outlier flag needs the median and the MAD of the whole series'
  in-range values, after exact duplicates are dropped. Those values are
  written chunk by chunk to a scratch Parquet file (8 bytes a reading), and
  ``median`` finds the middle values by selection: one streaming pass
  counts values per value bin, one collects the bin holding the wanted rank,
  and a bin too large for memory is binned again. Memory stays bounded by
  the bin limit, not the series.

The result equals the whole-series plan row for row
(``tests/test_long_series.py`` curates with a tiny bucket and compares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

BINS = 4096  # time bins per series for the cut; value bins per selection pass


@dataclass(frozen=True)
class TimeChunk:
    """Rows of one series with ``lo <= time < hi`` (None: unbounded), or those without a time."""

    lo: int | None
    hi: int | None
    null_time: bool = False
    before: int | None = None  # the series' last time before lo (for flag_gap_before)

    def predicate(self, time_int: pl.Expr) -> pl.Expr:
        if self.null_time:
            return time_int.is_null()
        p = time_int.is_not_null()
        if self.lo is not None:
            p = p & (time_int >= self.lo)
        if self.hi is not None:
            p = p & (time_int < self.hi)
        return p


def time_chunks(rows: pl.LazyFrame, time_int: pl.Expr, t_min: int, t_max: int, cap: int,
                align: int | None = None) -> list[TimeChunk]:
    """Consecutive time ranges of ``rows`` (one series) holding at most ``cap`` rows each.

    One streaming pass counts rows, and the last time, per time bin. Bins
    are packed greedily; a cut falls on a bin edge (rounded down to a
    multiple of ``align``, the resampling period, so that no resampled
    bucket is split). A bin holding more than ``cap`` rows on its own is one
    chunk, larger than a bucket: its times are too close to cut by bin, and
    rows sharing a time cannot be cut at all. Rows without a time come last,
    as the plan sorts them, in a chunk of their own.
    """
    width = max(1, -(-(t_max - t_min + 1) // BINS))
    per_bin = (
        rows.select(_b=(time_int - t_min) // width, _t=time_int)
        .group_by("_b").agg(n=pl.len(), last=pl.col("_t").max())
        .sort("_b", nulls_last=True).collect(engine="streaming")
    )
    nulls = per_bin.filter(pl.col("_b").is_null())
    timed = per_bin.filter(pl.col("_b").is_not_null())
    cuts: list[int] = []  # the lo of every chunk after the first
    befores: list[int | None] = []
    load, last = 0, None
    for b, n, t_last in timed.iter_rows():
        if load and load + n > cap:
            edge = t_min + int(b) * width
            if align:
                edge = edge // align * align
            if (not cuts or edge > cuts[-1]) and edge > t_min:
                cuts.append(edge)
                befores.append(last)
                load = 0
        load += n
        last = t_last if last is None else max(last, t_last)
    chunks: list[TimeChunk] = []
    bounds = [None, *cuts, None]
    for i in range(len(bounds) - 1):
        chunks.append(TimeChunk(bounds[i], bounds[i + 1], before=befores[i - 1] if i else None))
    if align and cuts:
        # Rounding an edge down can move rows into the chunk before; the
        # last time before each edge is then re-read exactly.
        fixed = []
        for ch in chunks:
            if ch.lo is None:
                fixed.append(ch)
                continue
            prev = rows.filter(time_int < ch.lo).select(time_int.max()).collect(engine="streaming").item()
            fixed.append(TimeChunk(ch.lo, ch.hi, before=prev))
        chunks = fixed
    if nulls.height and int(nulls["n"][0]):
        chunks.append(TimeChunk(None, None, null_time=True, before=None))
    return chunks


def _kth(values: pl.LazyFrame, k: int, limit: int) -> float:
    """The ``k``-th smallest (0-based) of the column ``v`` of ``values``, NaN ordered last, as Polars sorts.

    Holds at most ``limit`` values at once: while the values in play are
    more than that, one pass counts them per value bin and the next narrows
    to the bin holding rank ``k``. Binning keeps order because subtracting
    the same low end and scaling by the same positive factor never reverse
    two floats.
    """
    v = pl.col("v")
    finite = v.is_finite()
    c = values.select(
        n=pl.len(), nan=v.is_nan().sum(), neg=(v == -math.inf).sum(), pos=(v == math.inf).sum(),
        lo=v.filter(finite).min(), hi=v.filter(finite).max(),
    ).collect(engine="streaming").row(0, named=True)
    neg, fin_n = c["neg"], c["n"] - c["nan"] - c["neg"] - c["pos"]
    if k < neg:
        return -math.inf
    if k >= neg + fin_n + c["pos"]:
        return math.nan
    if k >= neg + fin_n:
        return math.inf
    k -= neg
    lo, hi = c["lo"], c["hi"]
    current, n = values.filter(finite), fin_n
    while n > limit and lo < hi:
        span = hi - lo
        scale = BINS / span if math.isfinite(span) and math.isfinite(BINS / span) else None
        if scale is None:  # a range too wide (or too narrow) for one scale factor: halve it
            mid = lo / 2 + hi / 2
            if mid >= hi:  # two neighbouring floats
                mid = lo
            below = current.filter(v <= mid).select(pl.len()).collect(engine="streaming").item()
            current, n = (current.filter(v <= mid), below) if k < below else (current.filter(v > mid), n - below)
            k = k if k < below else k - below
        else:
            b = ((v - lo) * scale).floor().clip(0, BINS - 1).cast(pl.Int32)
            per = current.group_by(b.alias("_b")).agg(n=pl.len()).sort("_b").collect(engine="streaming")
            seen = 0
            for bin_, cnt in per.iter_rows():
                if k < seen + cnt:
                    current = current.filter(b == bin_)
                    k -= seen
                    n = cnt
                    break
                seen += cnt
        lo, hi = current.select(lo=v.min(), hi=v.max()).collect(engine="streaming").row(0)
    if lo == hi:
        return float(lo)
    return float(current.select(v.sort()).collect().get_column("v")[k])


def median(values: pl.LazyFrame, limit: int) -> float | None:
    """The median of the column ``v`` of ``values``, as Polars' ``median()`` gives it, in bounded memory."""
    n = values.select(pl.len()).collect(engine="streaming").item()
    if n == 0:
        return None
    if n % 2:
        return _kth(values, n // 2, limit)
    a, b = _kth(values, n // 2 - 1, limit), _kth(values, n // 2, limit)
    return pl.Series([a, b], dtype=pl.Float64).median()  # Polars' own interpolation of the two


__all__ = ["BINS", "TimeChunk", "median", "time_chunks"]
