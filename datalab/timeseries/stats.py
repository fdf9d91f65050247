"""What curating one time-series delivery counted: a typed record, stored as the dict it always was.

``curate_delivery`` returned a dict of some twenty statistics that the
Dagster asset, the catalog, the manifest, the suite and the card each read
by key; a misspelt key read ``None`` and nobody noticed. The record names
every statistic once, with its type; ``to_dict()`` gives the dict the
catalog stores under ``stats.curated`` (and the manifest copies), key for
key and in the same order, so stored deliveries and published versions
read as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CurationStats:
    """The counts of one curated delivery (``datalab.timeseries.curate.curate_delivery``)."""

    # readings in the raw table, and in the curated one
    rows_in: int
    rows_out: int
    # exact duplicate rows: the only rows curation deletes
    exact_duplicates_removed: int
    # readings whose key (entity, time, sensor) an earlier delivery of the contract holds: excluded, unless
    # the delivery is a declared correction, whose readings replace earlier ones (rows per earlier delivery)
    repeats_excluded: int
    correction: bool
    replaces: dict[str, int]
    # values converted to the contract's canonical unit
    values_converted: int
    # rows per flag column, in the table's order (datalab.timeseries.schema.FLAG_COLUMNS)
    flags: dict[str, int]
    entities: int
    # the delivery's first and last time: ISO text for timestamps, the index for index time (None: no rows)
    time_min: str | int | None
    time_max: str | int | None
    constant_sensors: list[str]
    # per sensor: n, nulls, min, max, mean, std, unit, out_of_range, outliers
    sensors: dict[str, dict[str, Any]]
    pseudonymised_columns: list[str]
    # the engine run (datalab.engine.EngineRun.to_dict(): engine, device, fallback, peak_rss_mb, ...)
    engine: dict[str, Any]
    series_buckets: int
    # series cut by time, and their chunks: {"series": n, "chunks": n}
    long_series: dict[str, int]
    seconds: float
    bytes_out: int
    # rows repeating an earlier row's key and their share, checked against the contract's limit;
    # None with resampling, whose output rows are buckets, not readings
    duplicate_rows: int | None = None
    duplicate_share: float | None = None
    max_duplicate_share: float | None = None
    # the share over the limit, in words (empty when within it)
    warnings: tuple[str, ...] = ()
    # per sensor, where its time came from (measurement files only; datalab.intake.measurement)
    time_bases: dict[str, dict[str, Any]] = field(default_factory=dict)
    # a firm that withholds its name: the store key of the delivery's published form (its rows under the
    # firm's pseudonyms, written by curation), its rows' machine ids and the fingerprint of its mask
    # (firm_names.mask_digest); never copied into a manifest (datalab.store.publish.CURATION_REST)
    published_form: dict[str, Any] | None = None
    # the card's fine counts and sensor moments of the delivery (datalab.store.row_facts), merged at publish
    # instead of counted from the rows again; None where too many (or counted before they were kept)
    card_facts: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The statistics as the catalog stores them: flags as top-level keys; the duplicate counts,
        ``warnings`` and ``time_bases`` only where there are any (as ``curate_delivery`` always wrote them)."""
        dup: dict[str, Any] = {}
        if self.duplicate_rows is not None:
            dup = {"duplicate_rows": self.duplicate_rows, "duplicate_share": self.duplicate_share,
                   "max_duplicate_share": self.max_duplicate_share,
                   **({"warnings": list(self.warnings)} if self.warnings else {})}
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "exact_duplicates_removed": self.exact_duplicates_removed,
            "repeats_excluded": self.repeats_excluded,
            "correction": self.correction,
            "replaces": self.replaces,
            **dup,
            "values_converted": self.values_converted,
            **self.flags,
            "entities": self.entities,
            "time_min": self.time_min,
            "time_max": self.time_max,
            "constant_sensors": self.constant_sensors,
            "sensors": self.sensors,
            "pseudonymised_columns": self.pseudonymised_columns,
            **({"time_bases": self.time_bases} if self.time_bases else {}),
            "engine": self.engine,
            "series_buckets": self.series_buckets,
            "long_series": self.long_series,
            "seconds": self.seconds,
            "bytes_out": self.bytes_out,
            **({"published_form": self.published_form} if self.published_form else {}),
            **({"card_facts": self.card_facts} if self.card_facts else {}),
        }
