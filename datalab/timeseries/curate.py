"""Curation of time series: one Polars LazyFrame plan, run by the engine.

The plan (``build_plan``) takes the raw long table of one delivery and
returns the curated one. It uses only expressions, joins and group-bys that
the Polars GPU engine implements (no Python UDFs, no ``map_elements``): unit
conversions, sensor limits, pseudonyms and watermarks come in as small
tables that the plan joins, so the same plan runs on GPU or CPU.

Nothing is deleted silently except exact duplicate rows; every other defect
becomes a boolean flag column:

* ``flag_missing``        the reading has no value
* ``flag_unit_unknown``   the reading's unit cannot be converted to the canonical unit
* ``flag_out_of_range``   outside the contract's minimum/maximum (after conversion)
* ``flag_key_duplicate``  another reading has the same entity, time and sensor
* ``flag_outlier``        in range but further than ``outlier_mad`` robust deviations
                          (1.4826 x MAD) from the median of its entity and sensor
* ``flag_gap_before``     more than ``gap_factor`` expected steps since the previous reading
* ``flag_late``           not later than what earlier deliveries already covered

The curated file ends with three provenance columns (``PROVENANCE``): the
firm, the contract and the contract version the delivery was pushed under.
They are the columns a published version adds to every row, so a curated
file of a single-contract dataset is already a data file of the version and
publishing registers it as it is instead of re-encoding every row (4 s of a
10 M-row publish): see ``table_stream``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from datalab.config import Settings, safe_segment, settings
from datalab.contracts import units
from datalab.contracts.contract import Contract
from datalab.contracts.raw_table import KEY, PROVENANCE, duplicate_warning
from datalab.engine import Engine, EngineRun, OnResult, Twin
from datalab.intake import receipts
from datalab.policy import firm_names, pseudonym
from datalab.store import catalog as cat
from datalab.store import row_facts, state
from datalab.store.storage import store
from datalab.timeseries import long_series, schema, split
from datalab.timeseries.ingest import raw_path, written_by_series
from datalab.timeseries.stats import CurationStats

FLAGS = schema.FLAG_COLUMNS  # the curated table's flags, declared once (datalab/timeseries/schema.py)
# Time as Int64: microseconds for timestamps, the index itself otherwise
# (readers.TIME_DTYPES gives time one of those two types).
TIME_INT = pl.col("time").cast(pl.Int64)


def curated_path(contract: Contract, delivery_id: str, s: Settings) -> Path:
    return s.curated / contract.tenant / contract.product / f"{safe_segment(delivery_id, 'delivery id')}.parquet"


def published_form_path(curated: Path) -> Path:
    """Where a masked firm's delivery keeps its published form: beside its curated file, named after the delivery."""
    return curated.with_name(f"{curated.stem}.published.parquet")


# Deliveries of at least this many rows (after repeats are excluded) get a published form. It moves
# work from the publish into the delivery's curation: worth it where a publish's rewrite is seconds
# (4-5.5 s at 10 M rows), not for a small delivery, whose curation took 18 % longer with it (58
# against 49 ms at 10,000 rows) and whose rewrite at publish is as short (docs/performance.md).
PUBLISHED_FORM_ROWS = 1_000_000


@dataclass
class PublishedForm:
    """The published form of a delivery of a firm that withholds its name, written with its curated file.

    The version's rows of such a firm carry its pseudonyms (tenant, contract
    id, machine ids: datalab.policy.firm_names). Publishing used to read the
    curated file and write those rows anew; now curation writes them once
    more while its result is in memory (``engine.Twin``), and publishing
    copies the file when the mask it would apply has the fingerprint recorded
    here (datalab.store.publish). The file is named after the delivery, so
    retention and withdrawal delete it with the delivery's other files.
    """

    contract: Contract
    contract_version: str
    twin: Twin
    machines: set[str]

    @classmethod
    def of(cls, contract: Contract, contract_version: str, rows: int, curated: Path, s: Settings) -> PublishedForm | None:
        """The form to write for ``contract``'s delivery of ``rows`` rows; None for a firm published under
        its own name, and for a delivery under ``PUBLISHED_FORM_ROWS``."""
        mask = firm_names.row_mask(contract, (), s)
        if mask is None or rows < PUBLISHED_FORM_ROWS:
            return None
        machines: set[str] = set()

        def entity(machine: str) -> str:
            machines.add(machine)
            return firm_names.entity_label(contract, machine, s)

        constants = dict(zip(PROVENANCE, (mask.tenant, mask.contract_id, contract_version), strict=True))
        return cls(contract, contract_version, Twin(published_form_path(curated), constants, {"entity": entity}), machines)

    def record(self, key: str, s: Settings) -> dict[str, Any]:
        """What the delivery's statistics keep: the file's store key, the machine ids of its rows (so that
        a publish needs no pass over the file to find them) and the fingerprint of its mask."""
        mask = firm_names.row_mask(self.contract, self.machines, s)
        assert mask is not None
        return {"key": key, "machines": sorted(self.machines), "mask_sha256": firm_names.mask_digest(mask, self.contract_version)}


def sensor_table(contract: Contract) -> pl.DataFrame:
    """Per measurement: canonical unit and limits (joined by the plan)."""
    ms = contract.measurements
    return pl.DataFrame({
        "sensor": [m.name for m in ms],
        "unit": [m.unit for m in ms],
        "_min": [float(m.minimum) if m.minimum is not None else None for m in ms],
        "_max": [float(m.maximum) if m.maximum is not None else None for m in ms],
        # logicalTypeOptions.exclusiveMinimum/Maximum: the bound itself is out of range
        "_xmin": [float(m.exclusive_minimum) if m.exclusive_minimum is not None else None for m in ms],
        "_xmax": [float(m.exclusive_maximum) if m.exclusive_maximum is not None else None for m in ms],
    }, schema={"sensor": pl.String, "unit": pl.String, "_min": pl.Float64, "_max": pl.Float64,
               "_xmin": pl.Float64, "_xmax": pl.Float64})


def conversion_table(contract: Contract) -> pl.DataFrame:
    """Every known spelling of a unit -> each canonical unit it converts to."""
    targets = {m.unit for m in contract.measurements if m.unit}
    extra = targets | {m.source_unit for m in contract.measurements if m.source_unit}
    rows = units.conversion_rows(targets, extra_spellings=extra)
    return pl.DataFrame(
        {
            "raw_unit": [r["raw_unit"] for r in rows],
            "unit": [r["unit"] for r in rows],
            "_factor": [r["factor"] for r in rows],
            "_offset": [r["offset"] for r in rows],
        },
        schema={"raw_unit": pl.String, "unit": pl.String, "_factor": pl.Float64, "_offset": pl.Float64},
    )


@dataclass(frozen=True)
class SeriesOrder:
    """What the plan needs to sort a delivery by one integer key.

    Polars sorts 10 M rows by (sensor, entity, time) in about 9 s on two
    cores (a multi-column sort compares row encodings); by one Int64 column
    it takes under 1 s. Output order is the same either way: ``series`` ranks
    every (sensor, entity) of the delivery in sorted order (nulls last), and
    the key is ``rank * stride + (time - t0)``, with a null time placed after
    every time of its series, as a multi-column sort with ``nulls_last``
    places it. Built by :func:`series_order` from one pass over the raw table.
    """

    series: pl.DataFrame  # sensor, entity, _s (u32 rank in output order)
    t0: int
    stride: int  # time span + 2: times sit at offsets 0..span, a null time at stride - 1
    nulls: bool  # a null entity or sensor exists: join with nulls_equal
    # The rank of the one series every row of this plan's input belongs to, where that is known
    # (a bucket of one series: ``one_series``); None: looked up row by row (``rank``).
    only: int | None = None

    def one_series(self, hashes: list[int]) -> SeriesOrder:
        """This order for a bucket whose rows are those of the series hashed ``hashes``: its rank a constant if it is one series.

        Exactly one series of the delivery must have that hash (a hash two
        series share names both); then every row of the bucket, picked by
        name or by hash, is that series', and its rank needs no lookup of
        each row's sensor and entity (29 of about 200 ms of a one-series
        bucket's plan, docs/performance.md).
        """
        if len(hashes) != 1:
            return self
        same = self.series.filter(SERIES_HASH.eq(pl.lit(hashes[0], pl.UInt64)))
        return dataclasses.replace(self, only=int(same.get_column("_s")[0])) if same.height == 1 else self

    def key(self) -> pl.Expr:
        """The sort key of a row, from its time and its series rank ``_s``."""
        return pl.col("_s").cast(pl.Int64) * self.stride + (TIME_INT - self.t0).fill_null(self.stride - 1)

    def rank(self) -> pl.Expr:
        """``_s`` of a row: the rank of its (sensor, entity) in ``series``.

        Three lookups in small tables: each text column to its position among
        the delivery's distinct values (nulls last), then the pair of
        positions to the rank. The left join with ``series`` on the two text
        columns that this replaces took 0.9-2.2 s of the plan at 10 M rows;
        the lookups take about 0.25 s. Same ranks, as an expression.
        """
        if self.only is not None:
            return pl.lit(self.only, pl.UInt32).alias("_s")
        sensors = self.series.get_column("sensor").unique().drop_nulls().sort()
        entities = self.series.get_column("entity").unique().drop_nulls().sort()
        width = len(entities) + 1  # room for a null entity

        def position(col: str, values: pl.Series) -> pl.Expr:
            return pl.col(col).replace_strict(
                values, pl.int_range(len(values), dtype=pl.Int64, eager=True), default=None, return_dtype=pl.Int64,
            ).fill_null(len(values))

        def code(sensor: pl.Expr, entity: pl.Expr) -> pl.Expr:
            return sensor * width + entity

        codes = self.series.select(code(position("sensor", sensors), position("entity", entities))).to_series()
        return code(position("sensor", sensors), position("entity", entities)).replace_strict(
            codes, self.series.get_column("_s"), return_dtype=pl.UInt32,
        ).alias("_s")

    def sorted_by_key(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        """``raw`` sorted by the key ``_k``, exact duplicates dropped (:func:`drop_exact_duplicates`), with ``_s``.

        The key names a row's series and time, so the sort carries only the
        key and the other columns, and ``sensor``, ``entity`` and ``time``
        are put back from the key after it: the sort's gather was the
        plan's largest step, most of it copying those three columns
        (docs/performance.md, "Why the code is as it is"). Rows with the
        same key have the same series and time, so the duplicates found on
        the key and the other columns are the same rows. Not for an engine
        that tries the GPU (``rows_plan``'s ``joins_only``): its plan stays
        as it was.
        """
        schema = raw.collect_schema()
        rest = [n for n in schema.names() if n not in ("sensor", "entity", "time")]
        lf = self.attach(raw).select(self.key().alias("_k"), *rest).sort("_k", maintain_order=True)
        lf = drop_exact_duplicates(lf, ["_k", *rest])
        offset = pl.col("_k") % self.stride
        return lf.with_columns(_s=(pl.col("_k") // self.stride).cast(pl.UInt32),
                               time=pl.when(offset != self.stride - 1).then(offset + self.t0).cast(schema["time"]))

    def lookups(self, contract: Contract) -> list[pl.Expr]:
        """A row's ``sensor`` and ``entity``, its sensor's unit and limits and its unit's conversion, from ``_s``.

        What the plan joined on text columns (the sensor table on
        ``sensor``, the conversion table on ``raw_unit`` and ``unit``), as
        gathers from small tables indexed by the series rank (0..n-1): the
        same values, without the joins' hashing of every row's text and
        their gathers of every column (57 against 119 ms for a 2.5 M-row
        bucket). The raw unit is numbered among the conversion table's
        spellings (one lookup); an unknown spelling, or none, converts to
        nothing, as the join found nothing for it.
        """
        sensors = sensor_table(contract)
        per = self.series.join(sensors, on="sensor", how="left").sort("_s")
        rank = pl.col("_s")
        looked_up = ["sensor", "entity", *(c for c in sensors.columns if c != "sensor")]
        if self.only is not None:  # one series: its values, not a gather per row
            out = [pl.lit(per.get_column(c)[self.only], per.schema[c]).alias(c) for c in looked_up]
        else:
            out = [pl.lit(per.get_column(c)).gather(rank).alias(c) for c in looked_up]
        conv = conversion_table(contract)
        spellings = conv.get_column("raw_unit").unique().sort()
        n = len(spellings) + 1  # the last number: a spelling the table does not hold
        grid = (per.select("_s", "unit").join(pl.DataFrame({"raw_unit": [*spellings, None], "_r": range(n)},
                                                            schema={"raw_unit": pl.String, "_r": pl.Int64}), how="cross")
                .join(conv, on=["raw_unit", "unit"], how="left").sort("_s", "_r"))
        spelling = pl.col("raw_unit").replace_strict(spellings, pl.int_range(len(spellings), dtype=pl.Int64, eager=True),
                                                     default=n - 1, return_dtype=pl.Int64)
        at = rank.cast(pl.Int64) * n + spelling
        return [*out, *(pl.lit(grid.get_column(c)).gather(at).alias(c) for c in ("_factor", "_offset"))]

    def attach(self, lf: pl.LazyFrame, joins_only: bool = False) -> pl.LazyFrame:
        """``lf`` with its series rank ``_s``; ``joins_only`` for the GPU engine, which has no ``replace_strict``."""
        if joins_only:
            return lf.join(self.series.lazy(), on=["sensor", "entity"], how="left", nulls_equal=self.nulls, maintain_order="left")
        return lf.with_columns(self.rank())


def series_table(raw: pl.LazyFrame) -> pl.DataFrame:
    """Per (sensor, entity): rows, first and last time. One streaming pass over the raw table."""
    return raw.group_by("sensor", "entity").agg(n=pl.len(), t_min=TIME_INT.min(), t_max=TIME_INT.max()).collect(engine="streaming")


def series_order(table: pl.DataFrame) -> SeriesOrder | None:
    """The one-key sort order for a delivery, or None when its keys do not fit an Int64.

    None (the plan then sorts by several columns, same result) when there is
    no time at all, or when ranks x time span would overflow 62 bits.
    """
    t0, t1 = table.get_column("t_min").min(), table.get_column("t_max").max()
    if t0 is None or t1 is None:
        return None
    stride = int(t1) - int(t0) + 2
    if table.height * stride >= 2**62:
        return None
    series = table.select("sensor", "entity").sort("sensor", "entity", nulls_last=True).with_row_index("_s")
    nulls = bool(table.get_column("sensor").null_count() or table.get_column("entity").null_count())
    return SeriesOrder(series=series, t0=int(t0), stride=stride, nulls=nulls)


# After the sort by the one key _k: does the row share (entity, time, sensor) with the row before or after it?
SAME_KEY_AS_A_NEIGHBOUR = ((pl.col("_k") == pl.col("_k").shift(1)) | (pl.col("_k") == pl.col("_k").shift(-1))).fill_null(False)


def drop_exact_duplicates(by_key: pl.LazyFrame, columns: list[str]) -> pl.LazyFrame:
    """Drop exact duplicate rows from a frame sorted (stably) by the one key _k.

    An exact duplicate shares its key, so after the sort it sits in a run of
    equal keys, in delivery order. Only the rows of such runs (a few percent)
    go through ``unique``; a hash ``unique`` over all 10 M rows of the raw
    table took 5 s of the plan's 12 on two cores, a hash table of every row.
    The rows to drop leave by an anti join on the row index; the sorted
    frame is cached, or Polars would sort it twice (9.1 s against 5.8 s for
    the whole plan at 10 M rows). Same result as
    ``unique(maintain_order=True)`` before the sort: the first of each set
    of duplicates in delivery order stays, in its place.
    """
    rows = by_key.with_row_index("_i").with_columns(_run=SAME_KEY_AS_A_NEIGHBOUR).cache()
    runs = rows.filter(pl.col("_run")).select("_i", *columns)
    first = runs.unique(subset=columns, keep="first", maintain_order=True).select("_i")
    later = runs.select("_i").join(first, on="_i", how="anti")
    return rows.join(later, on="_i", how="anti", maintain_order="left").drop("_i", "_run")


@dataclass(frozen=True)
class SeriesPiece:
    """What a time chunk of one long series needs from the rest of it (see ``long_series``)."""

    median: float | None  # of the series' in-range values, exact duplicates dropped
    mad: float | None  # median absolute deviation from that median
    before: int | None  # the series' last time before the chunk


def missing_reading(contract: Contract) -> pl.Expr:
    """Whether a reading has no value: null (an empty field), NaN, or one of the contract's numeric ``missingValues``.

    NaN used to stay a value, which Polars orders above every number, so a
    NaN was counted out of range and never missing (issue 23). ``raw_value``
    keeps what was delivered; ``value`` is null for a missing reading.
    """
    miss = pl.col("raw_value").is_null() | pl.col("raw_value").is_nan()
    numbers = contract.missing_numbers
    if numbers:
        miss = miss | pl.col("raw_value").is_in(pl.Series(numbers, dtype=pl.Float64).implode())
    return miss.fill_null(True)


def rows_plan(
    contract: Contract,
    raw: pl.LazyFrame,
    order: SeriesOrder | None = None,
    joins_only: bool = False,
) -> tuple[pl.LazyFrame, pl.Expr, list[str] | str]:
    """The plan up to the per-series statistics: (frame, key-duplicate flag, series column(s)).

    Sorted, exact duplicates dropped, units converted, missing, unknown-unit
    and out-of-range flags set, ``_t`` the time as Int64. Everything here
    works on rows that share a time, so a long series can run it in time
    chunks (its median is then found from these rows: ``long_series``).
    """
    series: list[str] | str = ["entity", "sensor"]
    # Sorted by sensor, entity and time; key duplicates keep their delivery
    # order (stable sorts), so the output order, and so the Parquet bytes,
    # are the same on every run and engine. Sensor first: a reader of one
    # sensor (validation chunks, ML teams) skips the other sensors' row
    # groups by their statistics. Every later join keeps this order.
    # Exact duplicates are the only deletion; the first in delivery order stays.
    if order is None:
        lf = raw.unique(maintain_order=True).sort(["sensor", "entity", "time"], nulls_last=True, maintain_order=True)
        key_duplicate = pl.len().over(KEY) > 1
    elif joins_only:
        # The same order by one Int64 key (see SeriesOrder): 10x faster. The
        # key also names (entity, time, sensor), so duplicates of any kind
        # sit next to each other: see drop_exact_duplicates.
        lf = order.attach(raw, joins_only)
        lf = drop_exact_duplicates(lf.with_columns(_k=order.key()).sort("_k", maintain_order=True), raw.collect_schema().names())
        key_duplicate = SAME_KEY_AS_A_NEIGHBOUR
        series = "_s"
    else:
        # The same, and the sensors' units, limits and conversions looked up by the series rank.
        lf = order.sorted_by_key(raw).with_columns(order.lookups(contract))
        key_duplicate = SAME_KEY_AS_A_NEIGHBOUR
        series = "_s"
    if order is None or joins_only:
        lf = lf.join(sensor_table(contract).lazy(), on="sensor", how="left", maintain_order="left")
        lf = lf.join(conversion_table(contract).lazy(), on=["raw_unit", "unit"], how="left", maintain_order="left")
    lf = lf.with_columns(_miss=missing_reading(contract)).with_columns(
        value=pl.when(~pl.col("_miss")).then(pl.col("raw_value") * pl.col("_factor") + pl.col("_offset")),
        flag_missing=pl.col("_miss"),
        flag_unit_unknown=~pl.col("_miss") & pl.col("_factor").is_null(),
    ).drop("_miss").with_columns(
        flag_out_of_range=pl.col("value").is_not_null()
        & ((pl.col("value") < pl.col("_min").fill_null(float("-inf"))) | (pl.col("value") > pl.col("_max").fill_null(float("inf")))
           | (pl.col("value") <= pl.col("_xmin")).fill_null(False) | (pl.col("value") >= pl.col("_xmax")).fill_null(False)),
    )
    return lf.with_columns(_t=TIME_INT), key_duplicate, series


# The values the robust statistics (median, MAD) are taken over: in range, not missing.
GOOD = pl.col("value").is_not_null() & ~pl.col("flag_out_of_range")


def _centre_and_spread(series: list[str] | str, order: SeriesOrder | None, joins_only: bool,
                       piece: SeriesPiece | None) -> tuple[pl.Expr, pl.Expr]:
    """Each row's series median and MAD among in-range values (``_med``, ``_mad``): windows over the series;
    plain aggregates for a plan of one series (``SeriesOrder.one_series``); given, for a long series' chunk."""
    if piece is not None:
        return pl.lit(piece.median, pl.Float64), pl.lit(piece.mad, pl.Float64)
    med = pl.col("value").filter(GOOD).median()
    mad = (pl.col("value") - pl.col("_med")).abs().filter(GOOD).median()
    if order is not None and order.only is not None and not joins_only:
        return med, mad  # one series: not windows over a single group
    return med.over(series), mad.over(series)


def build_plan(
    contract: Contract,
    raw: pl.LazyFrame,
    watermarks: pl.DataFrame | None = None,
    pseudonyms: dict[str, pl.DataFrame] | None = None,
    order: SeriesOrder | None = None,
    joins_only: bool = False,
    piece: SeriesPiece | None = None,
) -> pl.LazyFrame:
    """The curation plan for one delivery's raw long table.

    One linear chain: every per-series statistic (key duplicates, median,
    MAD) is a window expression or a neighbour comparison over the sorted
    frame rather than a group-by joined back. A branching plan made Polars
    compute the de-duplicated frame once per branch (5x slower at 1 M rows).
    The one branch left, in :func:`drop_exact_duplicates`, reads a cached
    frame, so the sort runs once.

    ``joins_only``: look values up by joins only, for an engine that tries
    the GPU (cudf-polars implements joins but not ``replace_strict``).
    ``piece``: ``raw`` is one time chunk of one long series, whose median,
    MAD and previous time come from outside the chunk (``long_series``).
    """
    cur = contract.curation
    time_is_ts = contract.time.logical_type == "timestamp"
    attrs = [a.name for a in contract.attributes]
    lf, key_duplicate, series = rows_plan(contract, raw, order, joins_only)
    if order is None:
        same_series = (pl.col("entity") == pl.col("entity").shift(1)) & (pl.col("sensor") == pl.col("sensor").shift(1))
    else:
        # _s ranks (sensor, entity); a null entity or sensor never continues
        # a series, as the comparison of the columns themselves gives null.
        same_series = (pl.col("_s") == pl.col("_s").shift(1)) & pl.col("entity").is_not_null() & pl.col("sensor").is_not_null()
    previous = pl.col("_t").shift(1)
    if piece is not None:
        # One series only: the first row continues the series before the chunk.
        first = pl.int_range(pl.len()) == 0
        previous = pl.when(first).then(pl.lit(piece.before, pl.Int64)).otherwise(previous)
        same_series = first | same_series
    # Key duplicates, and robust outliers per series among in-range values.
    med, mad = _centre_and_spread(series, order, joins_only, piece)
    lf = lf.with_columns(flag_key_duplicate=key_duplicate, _med=med).with_columns(_mad=mad)
    lf = lf.with_columns(
        flag_outlier=(GOOD & (pl.col("_mad") > 0)
                      & ((pl.col("value") - pl.col("_med")).abs() > cur.outlier_mad * 1.4826 * pl.col("_mad"))).fill_null(False)
    )
    # Gaps: a step larger than gap_factor x expected within one series.
    if cur.expected_step:
        lf = lf.with_columns(
            flag_gap_before=(same_series & ((pl.col("_t") - previous) > cur.gap_factor * cur.expected_step)).fill_null(False)
        )
    else:
        lf = lf.with_columns(flag_gap_before=pl.lit(False))
    # Late rows: at or before the watermark of earlier deliveries for that entity.
    if watermarks is not None and not watermarks.is_empty():
        lf = lf.join(watermarks.lazy().select("entity", "_wm"), on="entity", how="left", maintain_order="left") \
            .with_columns(flag_late=(pl.col("_t") <= pl.col("_wm")).fill_null(False))
    else:
        lf = lf.with_columns(flag_late=pl.lit(False))
    # Pseudonymise personal attributes by joining a value -> pseudonym table.
    for col, table in (pseudonyms or {}).items():
        lf = lf.join(table.lazy().rename({"_orig": col}), on=col, how="left", maintain_order="left") \
            .with_columns(pl.col("_pseudo").alias(col)).drop("_pseudo")
    cols = list(schema.columns(attrs))
    if cur.resample_us and time_is_ts:
        every = f"{cur.resample_us}us"
        lf = lf.with_columns(pl.col("time").dt.truncate(every)).group_by(
            ["delivery_id", "entity", "time", "sensor", "unit", *attrs], maintain_order=True
        ).agg(
            pl.col("value").mean(), pl.col("raw_value").mean(), pl.col("raw_unit").first(),
            *[pl.col(f).any() for f in FLAGS], n_samples=pl.len(),
        )
        cols.append("n_samples")
    return lf.select(cols)


SERIES_HASH = pl.struct("entity", "sensor").hash(seed=0)


def series_sizes(raw: pl.LazyFrame) -> pl.DataFrame:
    """Rows per series hash (columns h, n); series that share a hash travel together."""
    return raw.group_by(h=SERIES_HASH).agg(n=pl.len()).collect(engine="streaming")


# A delivery larger than one bucket is curated in at least this many buckets.
# engine._PartWriter encodes bucket k on one core while bucket k+1 is
# computed, so only the last bucket's encoding is not overlapped: with two
# buckets of 5 M rows that tail was 1.4 s of a 7.4 s curation (10 M rows,
# AMD EPYC, 2 cores). In four buckets the same delivery curated in 6.3 s at
# a 1.4 GB peak instead of 1.9 GB; each extra bucket scans the raw table
# once more (0.2 s at 10 M rows), which is why it is not more.
MIN_BUCKETS = 4
# A raw table written by series (ingest.written_by_series) is read by a bucket picked by name
# only where its series are (its other row groups skipped), so more buckets cost no more reads:
# such a delivery is cut into one bucket per series, down to this many rows a bucket.
BUCKET_MIN_ROWS = 500_000


def buckets_wanted(series: int, rows: int, by_series: bool) -> int:
    """How many buckets at least (``series_buckets``' ``at_least``) for a delivery larger than one.

    :data:`MIN_BUCKETS`, or for a raw table written by series one bucket
    per series down to :data:`BUCKET_MIN_ROWS` rows a bucket, as long as
    every bucket is still picked by name (:data:`NAMED_SERIES_MAX`): the
    10 M-row, 12-series delivery curated in 3.95-4.11 s at a 550 MB peak
    in twelve buckets against 4.21-4.43 s at 1.2 GB in five (the last part
    shorter and each part smaller; docs/performance.md).
    """
    if not by_series:
        return MIN_BUCKETS
    n = min(series, rows // BUCKET_MIN_ROWS)
    return n if n > MIN_BUCKETS and series <= n * NAMED_SERIES_MAX else MIN_BUCKETS


def series_buckets(sizes: pl.DataFrame, cap: int, at_least: int = 1) -> list[list[int]]:
    """Series hashes packed into buckets of at most ``cap`` rows, largest first.

    Every step of the plan works within one series (entity, sensor), so a
    delivery can be curated bucket by bucket with identical results, and peak
    memory is then bounded by the bucket, not the delivery
    (``DATALAB_CURATE_BUCKET_ROWS``). Buckets are packed by size (first fit,
    decreasing), not by ``hash % n``, which with a few large series puts two
    or three of them in one bucket. A series larger than ``cap`` gets a
    bucket of its own here, but ``curate_delivery`` cuts such series by
    time before packing (:func:`long_series_plans`) whenever the one-key
    order exists. ``sizes`` has columns h (the series hash) and n.

    Where first fit gives fewer than ``at_least`` buckets, the series are
    spread over ``at_least`` buckets instead, each to the least loaded one
    (largest first); see :data:`MIN_BUCKETS` for why. With more buckets than
    first fit needed no bucket came out over ``cap`` in 20,000 random cases,
    but the cap is the memory bound, so it is checked, not assumed.
    """
    ordered = sizes.sort(["n", "h"], descending=[True, False]).select("h", "n").rows()
    loads: list[int] = []
    members: list[list[int]] = []
    for h, n in ordered:
        for b, load in enumerate(loads):
            if load + n <= cap:
                loads[b] += n
                members[b].append(h)
                break
        else:
            loads.append(n)
            members.append([h])
    if len(members) >= at_least or len(ordered) < 2:
        return members
    spread: list[list[int]] = [[] for _ in range(min(at_least, len(ordered)))]
    spread_loads = [0] * len(spread)
    for h, n in ordered:
        b = spread_loads.index(min(spread_loads))
        spread_loads[b] += n
        spread[b].append(h)
    return spread if max(spread_loads) <= cap else members


def in_series_order(buckets: list[list[int]], order: SeriesOrder) -> list[list[int]]:
    """``buckets`` (series hashes) ordered by the first series each holds, in the delivery's series order.

    With a bucket per series the curated file is then in the order one plan
    over the whole delivery gives it (sensor, entity, time), whatever the
    number of buckets; first fit orders them largest first.
    """
    first = {h: r for h, r in order.series.select(SERIES_HASH.alias("h"), "_s").sort("_s", descending=True).iter_rows()}
    return sorted(buckets, key=lambda b: min(first.get(h, len(first)) for h in b))


# A series at least this long is moved into a last part of its own (:func:`small_last_part`).
TAIL_SERIES_MIN_ROWS = 250_000


def small_last_part(buckets: list[list[int]], sizes: dict[int, int]) -> list[list[int]]:
    """``buckets`` with the smallest series of the last bucket moved into a bucket of its own, at the end.

    The parts of a delivery are written on one thread while the next part's
    plan runs (``Engine.sink_parquet_parts``), so every part's write hides
    behind a plan but the last one's, which the curation waits for on one
    core: 1.2 s for a 2.5 M-row part of a 10 M-row delivery on 2 cores (the
    timeline in docs/performance.md). A smaller last part shortens that wait
    by what it no longer writes, for one plan more. A series under
    :data:`TAIL_SERIES_MIN_ROWS` saves less than that plan costs; a bucket
    of one series is left as it is. The same rows either way: every step of
    the plan works within one series. ``sizes``: rows per series hash.
    """
    if not buckets or len(buckets[-1]) < 2:
        return buckets
    smallest = min(buckets[-1], key=lambda h: (sizes.get(h, 0), h))
    if sizes.get(smallest, 0) < TAIL_SERIES_MIN_ROWS:
        return buckets
    return [*buckets[:-1], [h for h in buckets[-1] if h != smallest], [smallest]]


# Up to this many series a bucket's rows are picked by comparing their names, not by hashing them.
NAMED_SERIES_MAX = 6


def bucket_rows(raw: pl.LazyFrame, hashes: list[int], series: pl.DataFrame | None = None) -> pl.LazyFrame:
    """The rows of ``raw`` whose series hash is in ``hashes``.

    A plain predicate, so the Parquet scan filters while it reads and only
    the bucket's rows are ever in memory (a semi join with a key table made
    the in-memory engine read the whole delivery first). Given the series
    table (``series``: sensor and entity of every series), a bucket of at
    most :data:`NAMED_SERIES_MAX` series is picked by comparing names:
    hashing both text columns of every row of the delivery, once per bucket,
    was the largest step of a bucket's plan (0.20 s of 0.7 s for a 2.5 M-row
    bucket of a 10 M-row delivery; by names 0.13 s). Past six series the
    comparisons cost more than the hash (docs/performance.md). The same
    rows either way: every series whose hash is in ``hashes`` is named.
    """
    if series is not None:
        named = series.filter(SERIES_HASH.is_in(pl.Series(hashes, dtype=pl.UInt64).implode()))
        if named.height <= NAMED_SERIES_MAX:
            return raw.filter(pl.any_horizontal(pl.lit(False), *[_is_series(r["sensor"], r["entity"])
                                                                  for r in named.iter_rows(named=True)]))
    return raw.filter(SERIES_HASH.is_in(pl.Series(hashes, dtype=pl.UInt64).implode()))


def scan_weight(series: int) -> float:
    """What a filter of the raw table for ``series`` series costs, in filters of one series by name.

    Measured per 10 M rows (2026-12-06, 2 cores): one series by name
    0.07-0.08 s, three 0.17 s, a bucket past :data:`NAMED_SERIES_MAX`
    (picked by hash) 0.3 s. ``split.SPLIT_FROM_PARTS`` is in these units.
    """
    return 0.5 + 0.45 * series if series <= NAMED_SERIES_MAX else 4.0


def split_pays(keys: list[list[int]], long_series: int) -> bool:
    """Whether splitting the raw table once costs less than filtering it for every bucket (``keys``) and long series."""
    return sum(scan_weight(len(k)) for k in keys) + long_series * scan_weight(1) >= split.SPLIT_FROM_PARTS


def _is_series(sensor: str | None, entity: str | None) -> pl.Expr:
    return pl.col("sensor").eq_missing(pl.lit(sensor, pl.String)) & pl.col("entity").eq_missing(pl.lit(entity, pl.String))


def _short_rows(raw: pl.LazyFrame, hashes: list[int], long: pl.DataFrame, long_hashes: set[int],
                series: pl.DataFrame | None = None) -> pl.LazyFrame:
    """A bucket's rows, without a long series that happens to share one of its hashes (cut by time instead)."""
    rows = bucket_rows(raw, hashes, series)
    shared = long.filter(SERIES_HASH.is_in(list(long_hashes & set(hashes))))
    if shared.is_empty():
        return rows
    return rows.filter(~pl.any_horizontal(*[_is_series(r["sensor"], r["entity"]) for r in shared.iter_rows(named=True)]))


def long_series_plans(
    contract: Contract, raw: pl.LazyFrame, series: dict[str, Any], cap: int,
    watermarks: pl.DataFrame | None, pseudonyms: dict[str, pl.DataFrame] | None, order: SeriesOrder,
    joins_only: bool, engine: Engine, scratch: Path,
) -> list[pl.LazyFrame]:
    """The plans of one series longer than a bucket: one per time chunk, in time order.

    ``series`` is its row of the series table; ``scratch`` a folder of its
    own. Its in-range values, exact duplicates dropped, are first written
    chunk by chunk to ``scratch``
    (one Float64 column), and its median and MAD found from them by
    selection in bounded memory; each chunk's plan then takes those and the
    time before the chunk as given (``SeriesPiece``). See ``long_series``.
    """
    rows = raw.filter(_is_series(series["sensor"], series["entity"]))
    if series["t_min"] is None:  # no time at all: nothing to cut by
        return [build_plan(contract, rows, watermarks, pseudonyms, order, joins_only)]
    values = scratch / "values"
    values.mkdir(parents=True, exist_ok=True)
    # The series' rows, once, streamed to a file of their own: the passes
    # below and every chunk's plan then read the series, not the delivery
    # (10 M rows cut into 36 chunks: 19.2 s reading the delivery each time).
    rows.sink_parquet(scratch / "rows.parquet", engine="streaming")
    rows = pl.scan_parquet(scratch / "rows.parquet")
    align = contract.curation.resample_us if contract.time.logical_type == "timestamp" else None
    chunks = long_series.time_chunks(rows, TIME_INT, int(series["t_min"]), int(series["t_max"]), cap, align)
    for i, ch in enumerate(chunks):
        lf, _, _ = rows_plan(contract, rows.filter(ch.predicate(TIME_INT)), order, joins_only)
        good, _ = engine.collect(lf.filter(GOOD).select(v=pl.col("value")))
        good.write_parquet(values / f"{i:05d}.parquet")
    v = pl.scan_parquet(values / "*.parquet")
    med = long_series.median(v, cap)
    mad = long_series.median(v.select(v=(pl.col("v") - med).abs()), cap) if med is not None else None
    return [
        build_plan(contract, rows.filter(ch.predicate(TIME_INT)), watermarks, pseudonyms, order, joins_only,
                   SeriesPiece(med, mad, ch.before))
        for ch in chunks
    ]


def provenance(contract: Contract, contract_version: str) -> dict[str, str]:
    """The PROVENANCE columns' values for a delivery (the engine appends them to its result)."""
    return dict(zip(PROVENANCE, (contract.tenant, contract.id, contract_version), strict=True))


def _as_time_int(v: Any) -> int | None:
    """A curated stats' time_min/time_max (ISO text for timestamps, int for an index) as TIME_INT's integer."""
    if v is None:
        return None
    if isinstance(v, int | float):
        return int(v)
    import datetime as dt

    try:
        t = dt.datetime.fromisoformat(str(v))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def earlier_curated(contract: Contract, delivery_id: str, s: Settings,
                    span: tuple[int | None, int | None] = (None, None)) -> list[tuple[str, Path]]:
    """(delivery id, curated file) of the contract's other deliveries that already hold published-to-be readings.

    Curated and not failed: a delivery whose suite failed is never
    published, so its readings do not make another one a repeat. Those
    received before ``delivery_id``, and those received after it that were
    curated first (out of order, e.g. a backfill) unless they are
    corrections (which replace at publish): the first delivery curated
    with a reading keeps it, so the key stays unique whatever the order.
    The lab curates pending deliveries oldest first (``state.pending``), so
    in practice the earliest delivery of a reading keeps it; re-curating an
    old delivery changes nothing, as the later ones left its readings out
    when they were curated. ``span`` (the delivery's
    first and last time, as TIME_INT) leaves out deliveries whose recorded
    time range does not meet it: a firm streaming a delivery every minute
    would otherwise compare each new one with every earlier one. The ranges
    are in ``dl_curated_spans``, read by an index range on their ends.
    """
    lo, hi = span
    d, p, sp = cat.deliveries, cat.processing, cat.curated_spans
    c = cat.Catalog(s.catalog_url)
    _fill_spans(contract, s)
    q = (
        sa.select(d.c.id, d.c.received_at, p.c.curated_path, sp.c.replaces)
        .select_from(sp.join(d, d.c.id == sp.c.delivery_id).join(p, p.c.delivery_id == sp.c.delivery_id))
        .where(sp.c.contract_id == contract.id, sp.c.delivery_id != delivery_id, d.c.status == "accepted",
               p.c.curated_path.is_not(None), p.c.stage.in_(("curated", "validated")),
               sa.or_(p.c.validation_ok.is_(None), p.c.validation_ok.is_(True)))
        .order_by(d.c.received_at, d.c.id)
    )
    if lo is not None and hi is not None:  # no time in common: no key in common
        q = q.where(sp.c.time_hi >= lo, sp.c.time_lo <= hi)
    with c.begin() as conn:
        me = conn.execute(sa.select(d.c.received_at).where(d.c.id == delivery_id, d.c.contract_id == contract.id,
                                                           d.c.status == "accepted")).scalar()
        rows = conn.execute(q).all() if me is not None else []
    st = store(s)
    return [(r.id, st.local(r.curated_path)) for r in rows
            if not (r.replaces and (r.received_at, r.id) > (me, delivery_id)) and st.exists(r.curated_path)]


# A time range that meets every other: a delivery without a recorded time is compared with all.
WHOLE_SPAN = (-(2**63), 2**63 - 1)
# (catalog, contract) whose curated deliveries all have their span row in this process.
_SPANNED: set[tuple[str, str]] = set()


def _span_row(contract_id: str, delivery_id: str, cur: dict[str, Any]) -> dict[str, Any]:
    """A delivery's ``dl_curated_spans`` row from its curated statistics (``CurationStats.to_dict()``)."""
    t0, t1 = _as_time_int(cur.get("time_min")), _as_time_int(cur.get("time_max"))
    lo, hi = (t0, t1) if None not in (t0, t1) else WHOLE_SPAN
    # no statistics: as before the table, never kept over a later delivery's readings
    return {"delivery_id": delivery_id, "contract_id": contract_id, "time_lo": lo, "time_hi": hi,
            "replaces": bool(cur.get("correction")) or not cur}


def _fill_spans(contract: Contract, s: Settings) -> None:
    """The span rows of the contract's deliveries curated before ``dl_curated_spans`` existed, once per process."""
    key = (s.catalog_url, contract.id)
    if key in _SPANNED:
        return
    d, p, sp = cat.deliveries, cat.processing, cat.curated_spans
    q = (sa.select(p.c.delivery_id, p.c.stats)
         .select_from(d.join(p, p.c.delivery_id == d.c.id).outerjoin(sp, sp.c.delivery_id == d.c.id))
         .where(d.c.contract_id == contract.id, p.c.curated_path.is_not(None), sp.c.delivery_id.is_(None)))
    try:
        with cat.Catalog(s.catalog_url).begin() as conn:
            missing = conn.execute(q).all()
            rows = [_span_row(contract.id, r.delivery_id, (json.loads(r.stats or "{}") or {}).get("curated") or {})
                    for r in missing]
            for k in range(0, len(rows), 1000):
                conn.execute(sp.insert(), rows[k:k + 1000])
    except sa.exc.IntegrityError:
        pass  # another process filled them in first (the same rows, from the same statistics)
    _SPANNED.add(key)


def exclude_repeats(contract: Contract, delivery_id: str, raw: pl.LazyFrame, table: pl.DataFrame, correction: bool,
                    scratch: Path, s: Settings) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """The delivery's raw rows without readings an earlier delivery already holds, and the counts.

    The dataset's key (entity, time, sensor) is unique across the deliveries
    of a contract in a version. A delivery that repeats published readings
    (a re-sent file, an overlapping export) had them published twice, as
    key "duplicates" flagged late (issue 23). Now a repeat is excluded here
    and counted (``repeats_excluded``), unless the firm declared the
    delivery a correction (``datalab push --correction``): then its
    readings are kept and replace the earlier ones when a version is
    published (``replaces``: rows per earlier delivery; see
    ``publish.correction_parts``). Rows without an entity or time never
    match. The remaining rows are written to ``scratch`` (read by every
    bucket of the plan) only when some were excluded. ``table`` is the
    delivery's series table (:func:`series_table` of ``raw``): its first and
    last times are the delivery's, so ``raw`` is not read again for them.
    """
    counts: dict[str, Any] = {"repeats_excluded": 0, "correction": correction, "replaces": {}}
    if not state.has_other_accepted(contract.id, delivery_id, s):
        return raw, counts  # the contract's first delivery: nothing to compare with
    lo, hi = table.get_column("t_min").min(), table.get_column("t_max").max()
    earlier = earlier_curated(contract, delivery_id, s, (lo, hi))
    if not earlier:
        return raw, counts
    with store(s).fetched(*(p for _d, p in earlier)) as here:
        return _exclude(raw, [(d, p) for (d, _p), p in zip(earlier, here, strict=True)], correction, scratch, counts)


def _exclude(raw: pl.LazyFrame, earlier: list[tuple[str, Path]], correction: bool, scratch: Path,
             counts: dict[str, Any]) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """exclude_repeats' work on the earlier deliveries' curated files (on this machine for the call)."""
    keys = pl.concat([pl.scan_parquet(p).select(*KEY, earlier=pl.lit(d)) for d, p in earlier])
    keys = keys.unique(subset=[*KEY, "earlier"])
    if correction:
        hits = raw.select(KEY).unique().join(keys, on=KEY, how="inner").group_by("earlier").agg(n=pl.len()).collect()
        counts["replaces"] = {d: int(n) for d, n in sorted(hits.iter_rows())}
        return raw, counts
    n = raw.join(keys.select(KEY).unique(), on=KEY, how="semi").select(pl.len()).collect().item()
    if not n:
        return raw, counts
    raw.join(keys.select(KEY).unique(), on=KEY, how="anti", maintain_order="left").sink_parquet(scratch)
    counts["repeats_excluded"] = int(n)
    return pl.scan_parquet(scratch), counts


def watermark_table(contract: Contract, delivery_id: str, received_at: str, s: Settings) -> pl.DataFrame:
    """Per entity, the latest time covered by deliveries received before this one (at ``received_at``, its receipt's)."""
    w = cat.watermarks
    with cat.Catalog(s.catalog_url).begin() as conn:
        rows = conn.execute(
            sa.select(w.c.entity, sa.func.max(w.c.max_time))
            .where(w.c.contract_id == contract.id, w.c.received_at < received_at, w.c.delivery_id != delivery_id)
            .group_by(w.c.entity)
        ).all()
    return pl.DataFrame(rows, schema={"entity": pl.String, "_wm": pl.Int64}, orient="row")


def _record_watermarks(contract: Contract, delivery_id: str, received_at: str, wm: pl.DataFrame, s: Settings) -> None:
    """Store per entity the latest time of this delivery (``wm``: entity, m), for later deliveries' late flag.

    ``received_at``: the delivery's, from its receipt. The rows go in as one
    statement with many parameter sets, not one per entity.
    """
    w = cat.watermarks
    rows = [dict(contract_id=contract.id, delivery_id=delivery_id, entity=ent, max_time=int(m), received_at=received_at)
            for ent, m in wm.iter_rows() if m is not None]
    with cat.Catalog(s.catalog_url).begin() as conn:
        conn.execute(w.delete().where(w.c.delivery_id == delivery_id))
        if rows:  # (an empty parameter list would run the insert once with no values)
            conn.execute(w.insert(), rows)


class Profile:
    """Counts and per-sensor statistics of a curated file, gathered from its parts while they are in memory.

    Each bucket's result is counted before it is written
    (``Engine.sink_parquet(..., on_result=profile.add)``) in one group-by on
    integer keys (``row_facts.run_table``: per run of one machine and sensor
    and operating condition): row and flag counts, time range, entities,
    per-sensor counts, ranges, first unit, mean and standard deviation (by
    Chan's update of count, mean and M2), each entity's latest time (the
    watermark), and the card's counts (``datalab.store.row_facts``), which
    publish merges instead of reading the version's rows. They add up over
    the parts, whose order is the file's. Four queries over each part and a
    pass over the finished file for the means took 0.84-1.03 s of CPU per
    10 M rows; the one group-by, the card's counts included, 0.87-0.97 s
    (docs/performance.md, ``store.row_facts``).
    """

    def __init__(self) -> None:
        self._runs: list[pl.DataFrame] = []
        self._schema: dict[str, str] = {}

    def add(self, df: pl.DataFrame) -> None:
        self._runs.append(row_facts.run_table(df, FLAGS, before={
            "_converted": pl.col("value").is_not_null() & (pl.col("value") != pl.col("raw_value")),
            # Rows that repeat the key of the row before them (the part is in
            # key order): with the exact duplicates removed, the rows that
            # repeat an earlier row's key.
            "_repeat": pl.col("flag_key_duplicate") & pl.col("entity").eq_missing(pl.col("entity").shift(1))
            & pl.col("sensor").eq_missing(pl.col("sensor").shift(1)) & pl.col("time").eq_missing(pl.col("time").shift(1)),
        }, extra={
            "values_converted": pl.col("_converted").sum(), "key_repeats": pl.col("_repeat").sum(),
            "v_min": pl.col("value").min(), "v_max": pl.col("value").max(), **row_facts.moments("v_", pl.col("value")),
        }))
        self._schema = self._schema or {k: str(v) for k, v in df.schema.items()}

    def _all(self) -> pl.DataFrame:
        return pl.concat(self._runs) if self._runs else pl.DataFrame()

    def watermarks(self) -> pl.DataFrame:
        """Per entity, the latest time (epoch microseconds) of the delivery: columns entity, m."""
        return (self._all().group_by("entity").agg(m=pl.col("time_max").max().cast(pl.Int64))
                .sort("entity", nulls_last=True))

    def result(self) -> dict[str, Any]:
        """The profile of the curated file (whose parts were all added)."""
        runs = self._all()
        agg = runs.select(
            rows=pl.col("rows").sum().cast(pl.Int64), values_converted=pl.col("values_converted").sum().cast(pl.Int64),
            time_min=pl.col("time_min").min(), time_max=pl.col("time_max").max(),
            key_repeats=pl.col("key_repeats").sum().cast(pl.Int64),
            **{f: pl.col(f"_{f}").sum().cast(pl.Int64) for f in FLAGS},
        ).row(0, named=True) | {"entities": runs.get_column("entity").n_unique()}
        per = (row_facts.with_merged_mean(runs, "v_", ["sensor"]).group_by("sensor", maintain_order=True).agg(
            pl.col("rows").sum().cast(pl.Int64).alias("n"), pl.col("nulls").sum().cast(pl.Int64),
            pl.col("v_min").min().alias("min"), pl.col("v_max").max().alias("max"), *row_facts.merged_moments("v_", ["sensor"]),
            pl.col("unit").first(), pl.col("_flag_out_of_range").sum().cast(pl.Int64).alias("out_of_range"),
            pl.col("_flag_outlier").sum().cast(pl.Int64).alias("outliers"))
            .with_columns(mean=pl.col("v_mean"), std=pl.when(pl.col("v_n") > 1).then((pl.col("v_m2") / (pl.col("v_n") - 1)).sqrt()))
            .select("sensor", "n", "nulls", "min", "max", "mean", "std", "unit", "out_of_range", "outliers").sort("sensor"))
        sensors = {r["sensor"]: {k: v for k, v in r.items() if k != "sensor"} for r in per.iter_rows(named=True)}
        constant = sorted(k for k, v in sensors.items() if v["n"] > 1 and (v["std"] == 0.0 or v["min"] == v["max"]))
        return {
            **{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in agg.items()},
            "flags": {f: int(agg[f]) for f in FLAGS},
            "sensors": sensors,
            "constant_sensors": constant,
            "card_facts": row_facts.delivery_facts([row_facts.PartFacts(r) for r in self._runs], self._schema, FLAGS),
        }


def _time_bases(path: Path) -> dict[str, dict[str, Any]]:
    """Per sensor, where its time came from (measurement files: datalab.intake.measurement); {} for other layouts."""
    lf = pl.scan_parquet(path)
    if "time_base" not in lf.collect_schema():
        return {}
    rate = pl.col("sample_rate_hz") if "sample_rate_hz" in lf.collect_schema() else pl.lit(None, pl.Float64)
    rows = lf.group_by("sensor").agg(time_base=pl.col("time_base").unique().sort().str.join("; "),
                                     sample_rate_hz=rate.first()).sort("sensor").collect()
    return {r.pop("sensor"): r for r in rows.iter_rows(named=True)}


@dataclass(frozen=True)
class DeliveryInput:
    """What the curation reads of one delivery before any plan runs: the plans' inputs.

    Gathered once (``read_delivery``) so that running the plans
    (``run_plans``) and counting the result (``curation_stats``) read the
    same values by name, not a dozen locals of one long function.
    """

    raw: pl.LazyFrame  # the delivery's raw rows, repeats of earlier deliveries excluded
    rows_in: int  # rows of the raw Parquet, before anything was excluded
    repeats: dict[str, Any]  # exclude_repeats' counts: repeats_excluded, correction, replaces
    receipt: receipts.Receipt
    pseudonyms: dict[str, pl.DataFrame]  # per personal attribute, value -> pseudonym
    watermarks: pl.DataFrame | None  # per entity, what earlier deliveries covered (None for a correction)
    table: pl.DataFrame  # the series table (series_table)
    order: SeriesOrder | None
    raw_file: Path | None = None  # the Parquet file ``raw`` scans (the split reads it: split.split_rows)
    by_series: bool = False  # ``raw`` is a raw file written by series (ingest.written_by_series)

    @property
    def rows_kept(self) -> int:
        """The rows the plans read: the delivery's, less the repeats excluded."""
        return self.rows_in - self.repeats["repeats_excluded"]


@dataclass(frozen=True)
class PlanRun:
    """How the plans ran: the engine's record, the parts written, the long series cut by time."""

    run: EngineRun
    buckets: int
    long_series: dict[str, int]  # series cut by time, and their chunks


def read_delivery(contract: Contract, delivery_id: str, scratch: Path, s: Settings, raw_file: Path | None = None) -> DeliveryInput:
    """The delivery's raw rows and the small tables the plans join to them (``scratch``: see exclude_repeats).

    ``raw_file``: the raw table on this machine (a fetched copy), if not at its own path.
    """
    source = raw_file or raw_path(contract, delivery_id, s)
    whole = pl.scan_parquet(source)
    rows_in = whole.select(pl.len()).collect().item()  # from the Parquet metadata
    receipt = receipts.get_receipt(delivery_id, s=s)
    # The series table of the whole delivery also gives exclude_repeats its time span (one read
    # of the raw table less); it is made again only when some readings were excluded.
    table = series_table(whole)
    raw, repeats = exclude_repeats(contract, delivery_id, whole, table, receipt.correction, scratch, s)
    pseudonyms = {
        a.name: pseudonym.mapping(raw.select(a.name).unique().collect().get_column(a.name), f"{contract.tenant}:{a.name}", s)
        for a in contract.attributes if a.personal
    }
    # A declared correction's readings replace earlier ones: not late.
    wm = None if receipt.correction else watermark_table(contract, delivery_id, receipt.received_at, s)
    if raw is not whole:
        table = series_table(raw)
    return DeliveryInput(raw=raw, rows_in=rows_in, repeats=repeats, receipt=receipt, pseudonyms=pseudonyms,
                         watermarks=wm, table=table, order=series_order(table),
                         raw_file=source if raw is whole else scratch,
                         by_series=raw is whole and written_by_series(source))


def run_plans(contract: Contract, inp: DeliveryInput, engine: Engine, out: Path, cap: int,
              on_result: OnResult, twin: Twin | None = None, on_written: OnResult | None = None,
              on_part: OnResult | None = None) -> PlanRun:
    """Curate the delivery into ``out``: one plan when it fits a bucket of ``cap`` rows, else one per bucket.

    ``on_result`` sees each part while it is in memory (``Profile.add``), so
    the file is counted without being read back. ``twin``: the delivery's
    published form (:class:`PublishedForm`), written from the same parts.
    ``on_written``, ``on_part``: see :func:`curate_delivery`.
    """
    joins_only = engine.tries_gpu()
    if inp.rows_kept <= cap:
        plan = build_plan(contract, inp.raw, inp.watermarks, inp.pseudonyms, inp.order, joins_only)
        run = engine.sink_parquet(plan, out, _provenance_of(contract, inp), on_result=on_result, twin=twin,
                                  on_written=on_written)
        return PlanRun(run, buckets=1, long_series={"series": 0, "chunks": 0})
    return _run_buckets(contract, inp, engine, out, cap, joins_only, on_result, twin, on_part)


def _provenance_of(contract: Contract, inp: DeliveryInput) -> dict[str, str]:
    # The version the delivery was pushed under, not the contract's current one.
    return provenance(contract, inp.receipt.contract_version)


def _run_buckets(contract: Contract, inp: DeliveryInput, engine: Engine, out: Path, cap: int, joins_only: bool,
                 on_result: OnResult, twin: Twin | None = None, on_part: OnResult | None = None) -> PlanRun:
    """A delivery larger than a bucket: its series in buckets of at most ``cap`` rows, each its own plan.

    A series longer than a bucket is cut by time (long_series); the one-key
    order is needed for that (it names the series by rank), so without it
    every series goes to a bucket whole.
    """
    table, order = inp.table, inp.order
    long = table.filter(pl.col("n") > cap) if order is not None else table.clear()
    short = table.join(long.select("sensor", "entity"), on=["sensor", "entity"], how="anti", nulls_equal=True)
    # The sizes of series_sizes(raw), from the series table (no second pass).
    # With long series there are chunk plans to overlap with already.
    sizes = short.group_by(h=SERIES_HASH).agg(n=pl.col("n").sum())
    wanted = buckets_wanted(sizes.height, inp.rows_kept, inp.by_series) if long.is_empty() else 1
    keys = series_buckets(sizes, cap, wanted)
    if wanted > MIN_BUCKETS and order is not None:
        keys = in_series_order(keys, order)
    if long.is_empty():  # (else the long series' chunks come last)
        keys = small_last_part(keys, dict(sizes.select("h", "n").iter_rows()))
    long = long.sort("sensor", "entity", nulls_last=True)
    scratch = out.parent / f".{out.stem}.long"
    parts_dir = out.parent / f".{out.stem}.parts"
    try:
        long_hashes = set(long.select(SERIES_HASH).to_series().to_list())
        bucket_raw, long_raw = _bucket_inputs(inp, keys, long, long_hashes, parts_dir)
        plans = [build_plan(contract, r, inp.watermarks, inp.pseudonyms,
                            order.one_series(k) if order is not None and not long_hashes & set(k) else order, joins_only)
                 for k, r in zip(keys, bucket_raw, strict=True)]
        for i, (r, rows) in enumerate(zip(long.iter_rows(named=True), long_raw, strict=True)):
            plans += long_series_plans(contract, rows, r, cap, inp.watermarks, inp.pseudonyms, order, joins_only,
                                       engine, scratch / str(i))
        long_info = {"series": long.height, "chunks": len(plans) - len(keys)}
        run = engine.sink_parquet_parts(plans, out, _provenance_of(contract, inp), on_result=on_result, twin=twin,
                                        on_part=on_part)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
    return PlanRun(run, buckets=len(plans), long_series=long_info)


def _bucket_inputs(inp: DeliveryInput, keys: list[list[int]], long: pl.DataFrame, long_hashes: set[int],
                   parts_dir: Path) -> tuple[list[pl.LazyFrame], list[pl.LazyFrame]]:
    """The rows of each bucket (``keys``: their series hashes) and of each long series (``long``, hashed ``long_hashes``).

    Where their scans would cost ``split.SPLIT_FROM_PARTS`` scans of one
    series or more (:func:`scan_weight`), one pass writes them to a file
    each (``split.split_rows``); below, each is a filter over the raw rows.
    """
    if not split_pays(keys, long.height) or inp.raw_file is None:
        return [_short_rows(inp.raw, k, long, long_hashes, inp.table) for k in keys], [inp.raw] * long.height
    hashes = pl.Series([h for k in keys for h in k], dtype=pl.UInt64)
    which = pl.Series([i for i, k in enumerate(keys) for _ in k], dtype=pl.Int32)
    part = SERIES_HASH.replace_strict(hashes, which, default=None, return_dtype=pl.Int32)
    # a long series may share its hash with short ones: its own part, by name
    for j, r in enumerate(long.iter_rows(named=True)):
        part = pl.when(_is_series(r["sensor"], r["entity"])).then(pl.lit(len(keys) + j, pl.Int32)).otherwise(part)
    files = [pl.scan_parquet(f) for f in split.split_rows(inp.raw_file, part, len(keys) + long.height, parts_dir)]
    return files[:len(keys)], files[len(keys):]


def duplicate_counts(contract: Contract, inp: DeliveryInput, prof: dict[str, Any]) -> dict[str, Any]:
    """The duplicate fields of the statistics, and the warning when their share is over the contract's limit.

    Rows that repeat an earlier row's key (removed or flagged), and their
    share: over curation.max_duplicate_share the suite fails
    (validate.lab_rules) and the card says so. Not with resampling, whose
    output rows are buckets, not readings.
    """
    exact = inp.rows_kept - prof["rows"]
    dup_rows = exact + int(prof["key_repeats"])
    share = dup_rows / inp.rows_in if inp.rows_in else 0.0
    limit = contract.curation.max_duplicate_share
    resampled = bool(contract.curation.resample_us and contract.time.logical_type == "timestamp")
    return {
        "exact_duplicates_removed": exact,
        "duplicate_rows": None if resampled else dup_rows,
        "duplicate_share": None if resampled else round(share, 6),
        "max_duplicate_share": None if resampled else limit,
        "warnings": (duplicate_warning(dup_rows, inp.rows_in, limit),) if not resampled and share > limit else (),
    }


def curation_stats(contract: Contract, inp: DeliveryInput, prof: dict[str, Any], ran: PlanRun, out: Path,
                   t0: float) -> CurationStats:
    """The typed record of one curation: the profile of the file written, how it ran, how long it took since ``t0``."""
    return CurationStats(
        rows_in=inp.rows_in,
        rows_out=prof["rows"],
        # Readings whose key (entity, time, sensor) an earlier delivery of
        # the contract already holds: excluded, or for a declared correction
        # kept, replacing the earlier ones (per earlier delivery, at publish).
        repeats_excluded=inp.repeats["repeats_excluded"],
        correction=inp.repeats["correction"],
        replaces=inp.repeats["replaces"],
        **duplicate_counts(contract, inp, prof),
        values_converted=int(prof["values_converted"]),
        flags=prof["flags"],
        entities=prof["entities"],
        time_min=prof["time_min"],
        time_max=prof["time_max"],
        constant_sensors=prof["constant_sensors"],
        sensors=prof["sensors"],
        pseudonymised_columns=sorted(inp.pseudonyms),
        time_bases=_time_bases(out),
        card_facts=prof["card_facts"],
        engine=ran.run.to_dict(),
        series_buckets=ran.buckets,
        long_series=ran.long_series,
        seconds=round(time.perf_counter() - t0, 3),
        bytes_out=out.stat().st_size,
    )


def _record_curated(delivery_id: str, stats: CurationStats, receipt: receipts.Receipt, out: Path, s: Settings) -> None:
    """The delivery's state moves to curated with its statistics; a duplicate warning the push missed joins the receipt."""
    if stats.warnings and not receipt.warnings:
        receipts.add_warnings(delivery_id, list(stats.warnings), s)  # the push did not count them (a very large delivery)
    # The span first: it is read only for deliveries at the curated stage, so there is no moment
    # at which this delivery is curated and its span missing.
    sp = cat.curated_spans
    with cat.Catalog(s.catalog_url).begin() as conn:
        conn.execute(sp.delete().where(sp.c.delivery_id == delivery_id))
        conn.execute(sp.insert().values(**_span_row(receipt.contract_id, delivery_id, stats.to_dict())))
    state.set_stage(delivery_id, "curated", s=s, curated_path=store(s).key(out), stats={"curated": stats.to_dict()})


def curate_delivery(contract: Contract, delivery_id: str, engine: Engine | None = None,
                    s: Settings | None = None, on_written: OnResult | None = None,
                    on_part: OnResult | None = None) -> CurationStats:
    """Curate one ingested delivery; writes the curated Parquet and returns its counts (stored as ``to_dict()``).

    The steps: read the delivery and what its plans join (``read_delivery``),
    run the plans (``run_plans``, counting each part as it is written),
    store the delivery's watermarks, and record the statistics
    (``curation_stats``) in the delivery's state. With an object store the
    raw table is fetched for the plans and the curated file uploaded before
    its state says curated; the file stays on this machine for the suite
    check that follows (``store(s).evict`` drops it).

    ``on_written`` is handed the curated table as written, when it was
    curated in one part (at most a bucket of rows): the suite check that
    follows evaluates it in memory instead of reading the file back.
    ``on_part`` is handed each part of a delivery curated in parts, as the
    file holds it, in order (``validate.PartSuite.add``).
    """
    s = s or settings()
    engine = engine or Engine()
    st = store(s)
    out = curated_path(contract, delivery_id, s)
    t0 = time.perf_counter()
    scratch_raw = out.parent / f".{out.stem}.new-readings.parquet"
    with st.fetched(raw_path(contract, delivery_id, s)) as (raw_file,):
        inp = read_delivery(contract, delivery_id, scratch_raw, s, raw_file)
        counted = Profile()
        form = PublishedForm.of(contract, inp.receipt.contract_version, inp.rows_kept, out, s)
        ran = run_plans(contract, inp, engine, out, s.curate_bucket_rows, counted.add, form.twin if form else None,
                        on_written, on_part)
    scratch_raw.unlink(missing_ok=True)
    prof = counted.result()
    _record_watermarks(contract, delivery_id, inp.receipt.received_at, counted.watermarks(), s)
    stats = curation_stats(contract, inp, prof, ran, out, t0)
    twin = published_form_path(out)
    if form is not None:
        st.save(twin)
        stats = dataclasses.replace(stats, published_form=form.record(st.key(twin), s))
    else:  # curated again after the firm chose to be named: an earlier form is stale
        st.remove(st.key(twin))
    st.save(out, keep=True)
    _record_curated(delivery_id, stats, inp.receipt, out, s)
    return stats


__all__ = ["FLAGS", "PROVENANCE", "CurationStats", "DeliveryInput", "PlanRun", "Profile", "SeriesOrder", "build_plan",
           "curate_delivery", "curated_path", "json"]
