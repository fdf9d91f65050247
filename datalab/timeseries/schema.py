"""The curated long table of a time-series contract, declared once: its columns and its flags.

Curation writes these columns in this order; the suite, the card, the
datasheet and the Dagster metadata read the flag list and each flag's meaning
from here (the kind hands them to the core as ``CuratedSchema``), so that a
new flag is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    """One Boolean column curation sets on a reading it keeps: ``column`` in the table, ``meaning`` for people."""

    column: str
    meaning: str


# Columns every curated long table has, before the contract's attributes.
BASE_COLUMNS: tuple[str, ...] = ("delivery_id", "entity", "time", "sensor", "value", "unit", "raw_value", "raw_unit")

# The key a reading is unique by (a repeat is flagged, not dropped).
KEY_COLUMNS: tuple[str, ...] = ("entity", "time", "sensor")

# Curation's flags, after the attributes, in the table's order.
FLAGS: tuple[Flag, ...] = (
    Flag("flag_missing", "missing values"),
    Flag("flag_unit_unknown", "unknown units"),
    Flag("flag_out_of_range", "out of the contract's range"),
    Flag("flag_key_duplicate", "key duplicates (same entity, time, sensor)"),
    Flag("flag_outlier", "robust outliers"),
    Flag("flag_gap_before", "gaps before the reading"),
    Flag("flag_late", "late-arriving readings"),
)
FLAG_COLUMNS: tuple[str, ...] = tuple(f.column for f in FLAGS)
FLAG_WORDS: dict[str, str] = {f.column: f.meaning for f in FLAGS}


def columns(attributes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The curated table's columns for a contract with these attribute columns."""
    return (*BASE_COLUMNS, *attributes, *FLAG_COLUMNS)
