"""The card's counts over a version's rows, gathered per delivery while curation holds its parts.

The card (:mod:`datalab.store.datasheet`) reads two tables from the rows of a
version: the *fine counts* per (firm, contract, machine, sensor, operating
condition) - rows, time span, gap, missing and flag counts, and the sum of
the values' hashes that fingerprints a series - and the *sensor moments* per
(contract, sensor) - unit, row, missing and flagged counts, and the count,
mean, variance, minimum and maximum of the clean values. Both add up over
any cut of the rows: sums, minima and maxima, wrapping sums of UInt64 hashes,
and means and variances by the pairwise update of Chan, Golub and LeVeque
(``M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2)``).

So curation counts them on each part while the part is in memory
(``datalab.timeseries.curate.Profile``), keeps the delivery's total with its
statistics (:func:`delivery_facts`, stored under ``stats.curated.card_facts``),
and publish merges the deliveries' (:func:`merged_fine`,
:func:`merged_sensors`) instead of two group-bys over the whole version
(1.6 s of CPU of a 10 M-row publish, docs/performance.md). What does not add
up is still read from the rows at publish: the medians, the coverage buckets
(their width depends on the version's span) and the plotted samples.

Stored facts are used only where they describe the rows the version holds:
every included delivery has them, none has rows replaced by a later
correction, the version keeps the columns they were counted from with the
same types, and they were counted by this Polars (the value hashes are not
stable across Polars releases). Anything else is counted from the rows, as
before; :func:`usable` says why not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

# Version of the stored form below; a stored form of another version is counted again from the rows.
FORMAT = 1
# A delivery whose fine counts have more rows than this (machines x sensors x 3 shifts) keeps none:
# its publish counts from the rows. The facts are stored as JSON with the delivery's statistics.
MAX_FINE_ROWS = 20_000
# ... or whose machine and sensor names take more than this many bytes (a firm's ids are its own text).
MAX_NAME_BYTES = 2 << 20
# Seed of the value hashes whose sums fingerprint a series (datalab.store.datasheet.near_duplicate_series).
VALUE_SEED = 7
# The columns the facts are counted from: the version must hold them with the types they had.
COUNTED_FROM = ("entity", "sensor", "time", "value", "unit", "flag_gap_before", "flag_missing")
CLEAN_FLAGS = ("flag_out_of_range", "flag_outlier")


def is_ts(schema: dict[str, str]) -> bool:
    """Whether ``time`` holds timestamps (else an index: no operating condition)."""
    return schema.get("time", "").startswith("Datetime")


# Ticks of one hour per time unit: the hour of a UTC or naive timestamp is integer arithmetic on its ticks.
_HOUR_TICKS = {"ns": 3_600_000_000_000, "us": 3_600_000_000, "ms": 3_600_000}


def shift_code(dtype: pl.DataType | None = None) -> pl.Expr:
    """The operating condition of a reading: the shift of its hour, 0 night, 1 early, 2 late.

    Given the time column's ``dtype``, a UTC or naive timestamp's hour is
    taken from its ticks (floor division and modulo, also before 1970)
    instead of ``dt.hour()``'s calendar conversion: 0.2 s of CPU per 10 M
    readings on one core, against 0.02 s.
    """
    hour = pl.col("time").dt.hour().cast(pl.Int8)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone in (None, "UTC") and dtype.time_unit in _HOUR_TICKS:
        hour = ((pl.col("time").to_physical() // _HOUR_TICKS[dtype.time_unit]) % 24).cast(pl.Int8)
    return (((hour + 2) // 8) % 3).fill_null(0)


def clean_value(schema: dict[str, str]) -> pl.Expr:
    """``value`` where it is in the contract's range and no robust outlier, else null.

    Distributions and statistics describe these; the flagged values are
    counted separately (a few spikes would otherwise hide the distribution).
    """
    bad = [pl.col(f) for f in CLEAN_FLAGS if f in schema]
    if not bad:
        return pl.col("value")
    return pl.when(~pl.any_horizontal(*bad)).then(pl.col("value")).otherwise(None)


def fine_keys(schema: dict[str, str], literal: Sequence[str] = ()) -> list[str]:
    """The fine counts' key: ``literal`` (tenant, contract_id at publish), machine, sensor, condition (timestamps only)."""
    return [*literal, "entity", "sensor", *(["condition"] if is_ts(schema) else [])]


def fine_aggs(schema: dict[str, str], flags: Sequence[str]) -> dict[str, pl.Expr]:
    """The fine counts' columns over rows (``flags``: the flag columns of the version's kind that it holds)."""
    hashes = {"value_hash": pl.col("value").hash(seed=VALUE_SEED).sum()} if "value" in schema else {}
    return dict(rows=pl.len(), time_min=pl.col("time").min(), time_max=pl.col("time").max(),
                gaps=pl.col("flag_gap_before").sum(), missing=pl.col("flag_missing").sum(),
                **{f"_{f}": pl.col(f).sum() for f in flags}, **hashes)


def _fine_merge(flags: Sequence[str], hashes: bool) -> dict[str, pl.Expr]:
    """The fine counts' columns over fine counts: sums, minima, maxima (the hash sums wrap, as over rows)."""
    return dict(rows=pl.col("rows").sum(), time_min=pl.col("time_min").min(), time_max=pl.col("time_max").max(),
                gaps=pl.col("gaps").sum(), missing=pl.col("missing").sum(),
                **{f"_{f}": pl.col(f"_{f}").sum() for f in flags},
                **({"value_hash": pl.col("value_hash").sum()} if hashes else {}))


def sensor_aggs(schema: dict[str, str]) -> dict[str, pl.Expr]:
    """Per sensor (or any cut of its rows): unit, value nulls, flagged, and the clean values' count, mean, M2 and range.

    M2 is the sum of squared deviations from the mean (variance times n - 1),
    the form in which variances add up (:func:`_sensor_merge`).
    """
    clean = clean_value(schema)
    n = clean.count()
    return dict(unit=pl.col("unit").first(), nulls=pl.col("value").is_null().sum(),
                flagged=(pl.col("value").is_not_null() & clean.is_null()).sum(),
                n=n, mean=clean.mean(), m2=(clean.var() * (n - 1)).fill_null(0.0), min=clean.min(), max=clean.max())


def moments(prefix: str, value: pl.Expr) -> dict[str, pl.Expr]:
    """The count, mean and M2 of ``value`` (nulls left out), named ``<prefix>n``, ``<prefix>mean``, ``<prefix>m2``."""
    n = value.count()
    return {f"{prefix}n": n, f"{prefix}mean": value.mean(), f"{prefix}m2": (value.var() * (n - 1)).fill_null(0.0)}


def merged_moments(prefix: str, by: list[str]) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """Over rows of :func:`moments` with ``_mean_<prefix>`` (the merged mean per ``by``) alongside: n, mean, M2 merged.

    Chan's pairwise update for any number of parts:
    ``M2 = sum(M2_i) + sum(n_i (mean_i - mean)^2)``.
    """
    n_i, mean_i = pl.col(f"{prefix}n"), pl.col(f"{prefix}mean").fill_null(0.0)
    spread = pl.when(n_i > 0).then(n_i.cast(pl.Float64) * (mean_i - pl.col(f"_mean_{prefix}")) ** 2).otherwise(0.0)
    return (n_i.sum().alias(f"{prefix}n"),
            pl.when(n_i.sum() > 0).then(pl.col(f"_mean_{prefix}").first()).alias(f"{prefix}mean"),
            (pl.col(f"{prefix}m2").sum() + spread.sum()).alias(f"{prefix}m2"))


def with_merged_mean(df: pl.DataFrame, prefix: str, by: list[str]) -> pl.DataFrame:
    """``df`` with ``_mean_<prefix>``: the mean of all parts' values per ``by`` (for :func:`merged_moments`)."""
    n = pl.col(f"{prefix}n").cast(pl.Float64)
    return df.with_columns(((n * pl.col(f"{prefix}mean").fill_null(0.0)).sum().over(by) / n.sum().over(by)).alias(f"_mean_{prefix}"))


def _sensor_merge(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Sensor moments over sensor moments, per ``by``: sums, range, and the merged mean and M2."""
    return with_merged_mean(df, "", by).group_by(by, maintain_order=True).agg(
        pl.col("unit").first(), pl.col("rows").sum(), pl.col("nulls").sum(), pl.col("flagged").sum(),
        *merged_moments("", by), pl.col("min").min(), pl.col("max").max())


@dataclass(frozen=True)
class PartFacts:
    """The facts of one part of a delivery, per run of one machine and sensor and operating condition.

    No tenant or contract: one delivery has one of each. ``runs`` may hold
    a (machine, sensor, condition) more than once (a series cut by another):
    :func:`delivery_facts` adds them up.
    """

    runs: pl.DataFrame


# A part is grouped by its segments (below) while it has at most one per this many rows (at least
# SEGMENTS_MIN); a part not in series order would give a segment a row, and is grouped by hash instead.
ROWS_PER_SEGMENT = 16
SEGMENTS_MIN = 1_000


def run_table(df: pl.DataFrame, flags: Sequence[str], extra: dict[str, pl.Expr] | None = None,
              before: dict[str, pl.Expr] | None = None) -> pl.DataFrame:
    """One group-by of an in-memory part per segment of one machine, sensor and operating condition.

    A curated part holds each series in one run, in time order, so its rows
    fall into a few hundred segments of equal (machine, sensor, shift) per
    10 M rows. Numbered in order (``rle_id``, non-decreasing, so flagged
    sorted), they are grouped by slicing instead of hashing the machine and
    sensor text of every row: 0.31-0.33 s of CPU per 10 M rows against
    0.59 s for a hash group-by on the run and shift (docs/performance.md).
    A part that is not in series order is grouped by hash on the names.
    Columns: entity, sensor, [condition], the fine counts (:func:`fine_aggs`),
    the sensor moments (:func:`sensor_aggs`), and ``extra`` (over columns
    ``before`` adds). A (machine, sensor, condition) may come more than once:
    :func:`delivery_facts` adds them up.
    """
    schema = {k: str(v) for k, v in df.schema.items()}
    flags = [f for f in flags if f in schema]
    keys = ["entity", "sensor", *(["condition"] if is_ts(schema) else [])]
    lf = df.lazy().with_columns(condition=shift_code(df.schema["time"])) if "condition" in keys else df.lazy()
    seg = lf.select(pl.struct(keys).rle_id().alias("_seg")).collect().to_series()
    by_segment = seg.len() == 0 or seg[-1] < max(SEGMENTS_MIN, df.height // ROWS_PER_SEGMENT)
    names: dict[str, pl.Expr] = {}
    if by_segment:
        lf = lf.with_columns(seg.set_sorted())
        names = {k: pl.col(k).first() for k in keys}
    out = lf.with_columns(**(before or {})).group_by(["_seg"] if by_segment else keys, maintain_order=True).agg(
        **names, **fine_aggs(schema, flags), **sensor_aggs(schema), **(extra or {})).collect()
    return out.drop("_seg") if by_segment else out


def part_facts(df: pl.DataFrame, flags: Sequence[str]) -> PartFacts:
    """Count one part of a curated delivery (in memory, in the file's order)."""
    return PartFacts(run_table(df, flags))


def delivery_facts(parts: list[PartFacts], schema: dict[str, str], flags: Sequence[str]) -> dict[str, Any] | None:
    """The delivery's facts from its parts', as stored with its statistics (JSON); None where it has none to keep.

    None when a column they are counted from is missing, or the fine counts
    exceed ``MAX_FINE_ROWS`` rows or ``MAX_NAME_BYTES`` of names (publish
    then counts from the rows): they are kept in the catalog, with the
    delivery's statistics, and must stay small whatever a firm's ids are.
    """
    if not parts or not set(COUNTED_FROM) <= set(schema):
        return None
    flags = [f for f in flags if f in schema]
    runs = pl.concat([p.runs for p in parts])
    fine = runs.group_by(fine_keys(schema), maintain_order=True).agg(**_fine_merge(flags, "value_hash" in runs.columns))
    if fine.height > MAX_FINE_ROWS or _name_bytes(fine) > MAX_NAME_BYTES:
        return None
    sensors = _sensor_merge(runs, ["sensor"])
    return {
        "format": FORMAT,
        "polars": pl.__version__,
        "schema": {c: schema[c] for c in (*COUNTED_FROM, *CLEAN_FLAGS, *flags) if c in schema},
        "flags": flags,
        "fine": _columns(fine),
        "sensors": _columns(sensors),
    }


def _name_bytes(fine: pl.DataFrame) -> int:
    """Bytes of the text keys (machine and sensor names) the stored facts would hold."""
    return sum(int(fine.get_column(c).cast(pl.String).str.len_bytes().sum() or 0) for c in ("entity", "sensor"))


def _columns(df: pl.DataFrame) -> dict[str, list[Any]]:
    """A frame as JSON-ready columns: temporal values as their physical integers."""
    return {c: df.get_column(c).to_physical().to_list() for c in df.columns}


def usable(facts: dict[str, Any] | None, schema: dict[str, str], flags: Sequence[str]) -> str | None:
    """Why a delivery's stored ``facts`` cannot stand for its rows in a version of ``schema``; None if they can."""
    if not facts:
        return "no facts stored"
    if facts.get("format") != FORMAT:
        return f"stored in form {facts.get('format')}, not {FORMAT}"
    if facts.get("polars") != pl.__version__:
        return f"counted by Polars {facts.get('polars')}, not {pl.__version__} (value hashes differ between releases)"
    if facts.get("flags") != [f for f in flags if f in schema]:
        return "counted for other flag columns"
    changed = [c for c, t in facts.get("schema", {}).items() if schema.get(c) != t]
    return f"the version holds {', '.join(changed)} with other types" if changed else None


def merged_fine(stored: list[tuple[dict[str, str], dict[str, Any]]], schema: dict[str, str],
                types: dict[str, pl.DataType], flags: Sequence[str]) -> pl.DataFrame:
    """The version's fine counts from its deliveries' stored facts: (literals, facts) per delivery.

    ``literals``: the columns the version adds to the delivery's rows
    (tenant, contract_id); ``types``: the version's column types, for
    the time span and the keys. The result is :func:`datasheet.fine_counts`'
    table before its condition codes are named.
    """
    flags = [f for f in flags if f in schema]
    literal = list(stored[0][0]) if stored else []
    frames = []
    for lits, facts in stored:
        cols = facts["fine"]
        fine = pl.DataFrame({
            "entity": pl.Series(cols["entity"], dtype=types["entity"]),
            "sensor": pl.Series(cols["sensor"], dtype=types["sensor"]),
            **({"condition": pl.Series(cols["condition"], dtype=pl.Int8)} if "condition" in cols else {}),
            "rows": pl.Series(cols["rows"], dtype=pl.UInt32),
            "time_min": pl.Series(cols["time_min"], dtype=pl.Int64).cast(types["time"]),
            "time_max": pl.Series(cols["time_max"], dtype=pl.Int64).cast(types["time"]),
            **{k: pl.Series(cols[k], dtype=pl.UInt32) for k in ("gaps", "missing", *(f"_{f}" for f in flags))},
            **({"value_hash": pl.Series(cols["value_hash"], dtype=pl.UInt64)} if "value_hash" in cols else {}),
        })
        frames.append(fine.with_columns(**{k: pl.lit(v, types.get(k, pl.String)) for k, v in lits.items()}))
    fine = pl.concat(frames, how="vertical")
    keys = fine_keys(schema, literal)
    return (fine.group_by(keys, maintain_order=True).agg(**_fine_merge(flags, "value_hash" in fine.columns))
            .with_columns(pl.col(c).cast(pl.UInt32) for c in ("rows", "gaps", "missing", *(f"_{f}" for f in flags))))


def merged_sensors(stored: list[tuple[dict[str, str], dict[str, Any]]], types: dict[str, pl.DataType]) -> pl.DataFrame:
    """The version's sensor statistics but the medians, from its deliveries' stored facts, sorted by (contract, sensor).

    Columns as :func:`datasheet.sensor_stats` before its medians: unit,
    rows, missing, flagged, and the clean values' mean, std (n - 1), min, max.
    """
    frames = []
    for lits, facts in stored:
        cols = facts["sensors"]
        frames.append(pl.DataFrame({
            "contract_id": pl.Series([lits["contract_id"]] * len(cols["sensor"]), dtype=types.get("contract_id", pl.String)),
            "sensor": pl.Series(cols["sensor"], dtype=types["sensor"]),
            "unit": pl.Series(cols["unit"], dtype=types.get("unit", pl.String)),
            **{k: pl.Series(cols[k], dtype=pl.UInt32) for k in ("rows", "nulls", "flagged", "n")},
            **{k: pl.Series(cols[k], dtype=pl.Float64) for k in ("mean", "m2", "min", "max")},
        }))
    by = ["contract_id", "sensor"]
    per = _sensor_merge(pl.concat(frames, how="vertical"), by)
    return per.with_columns(
        std=pl.when(pl.col("n") > 1).then((pl.col("m2") / (pl.col("n") - 1)).sqrt()),
        missing=pl.col("nulls").cast(pl.UInt32), **{c: pl.col(c).cast(pl.UInt32) for c in ("rows", "flagged")},
    ).select("contract_id", "sensor", "unit", "rows", "missing", "flagged", "mean", "std", "min", "max").sort(by)


@dataclass(frozen=True)
class StoredFacts:
    """The stored facts of every delivery of a version, with the version's column types: what publish merges.

    ``deliveries``: per delivery, in the version's order, the columns the
    version adds to its rows (tenant, contract_id) and its stored facts.
    """

    deliveries: list[tuple[dict[str, str], dict[str, Any]]]
    types: dict[str, pl.DataType]

    def fine(self, schema: dict[str, str], flags: Sequence[str]) -> pl.DataFrame:
        """The version's fine counts, condition codes not yet named (:func:`merged_fine`)."""
        return merged_fine(self.deliveries, schema, self.types, flags)

    def sensors(self) -> pl.DataFrame:
        """The version's sensor statistics but the medians (:func:`merged_sensors`)."""
        return merged_sensors(self.deliveries, self.types)


def stored_for(deliveries: list[tuple[dict[str, str], dict[str, Any] | None]], schema: dict[str, str],
               types: dict[str, pl.DataType], flags: Sequence[str]) -> tuple[StoredFacts | None, str | None]:
    """The version's stored facts if every delivery's are :func:`usable`, else None and why (the first delivery's reason)."""
    if not deliveries:
        return None, "no deliveries"
    for i, (_, facts) in enumerate(deliveries):
        why = usable(facts, schema, flags)
        if why is not None:
            return None, f"delivery {i + 1} of {len(deliveries)}: {why}"
    return StoredFacts([(lits, facts) for lits, facts in deliveries if facts is not None], types), None
