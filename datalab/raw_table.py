"""The raw long table a timeseries delivery is read into: its columns and their types.

Below the readers (the text readers and the measurement-file readers both
write it), so that either can name the schema without importing the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datalab.contract import Contract


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

