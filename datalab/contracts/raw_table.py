"""The raw long table a timeseries delivery is read into: its columns and their types.

Below the readers (the text readers and the measurement-file readers both
write it), so that either can name the schema without importing the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datalab.contracts.contract import Contract


# The key of a reading: one value per entity, time and sensor.
KEY = ["entity", "time", "sensor"]
# Literal columns naming where each row came from, last in the curated file.
PROVENANCE = ("tenant", "contract_id", "contract_version")

TIME_DTYPES = {"timestamp": pl.Datetime("us", "UTC"), "integer": pl.Int64, "number": pl.Int64}


VALUE_DTYPES = {
    "string": pl.String, "number": pl.Float64, "integer": pl.Int64,
    "timestamp": pl.Datetime("us", "UTC"), "boolean": pl.Boolean, "date": pl.Date,
}


def long_schema(contract: Contract) -> dict[str, pl.DataType]:
    """Columns and types of the raw long table for ``contract``."""
    schema: dict[str, pl.DataType] = {
        "entity": pl.String(),
        "time": TIME_DTYPES[contract.time.logical_type],
        "sensor": pl.String(),
        "raw_value": pl.Float64(),
        "raw_unit": pl.String(),
    }
    for a in contract.attributes:
        schema[a.name] = VALUE_DTYPES[a.logical_type]
    return schema


def duplicate_warning(dup_rows: int, rows: int, limit: float) -> str:
    """The words receipt, curation stats and card use for a delivery over its duplicate share."""
    return (f"{dup_rows:,} of {rows:,} rows ({dup_rows / rows:.1%}) repeat the key (entity, time, sensor) of an earlier row "
            f"of the delivery: more than the contract's max_duplicate_share of {limit:.0%}. Curation removes exact "
            "duplicates and flags the rest; check the layout's time axis (sample rate, time unit) before using it")
