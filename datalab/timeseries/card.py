"""The time-series kind's section of a version's card: how each delivery's long table was prepared.

It names curation's flags with the words of ``datalab.timeseries.schema``
(where the flags are declared), so the card, the datasheet and the suite
name a flag alike; it lived in the core's card module (``datalab.store.card``)
with its own copy of those words, which the core cannot keep in step with
the kind.
"""

from __future__ import annotations

from datalab.store.manifest import Manifest
from datalab.store.markdown import cell
from datalab.timeseries.schema import FLAG_WORDS


def preparation_section(m: Manifest) -> list[str]:
    """How a curated long table was prepared: per delivery, rows in and out, conversions and flags (markdown)."""
    lines: list[str] = []
    lines += ["", "## Preparation", "Exact duplicate rows removed; units converted to the contract's canonical units; every other defect is kept and flagged:", ""]
    lines += ["| delivery | rows in | rows out | duplicates removed | converted | " + " | ".join(FLAG_WORDS.values()) + " | engine |",
              "|---" * (6 + len(FLAG_WORDS)) + "|"]
    for d, st in m.curation.items():
        eng = (st.get("engine") or {}).get("engine", "?")
        lines.append(f"| {d} | {st['rows_in']:,} | {st['rows_out']:,} | {st['exact_duplicates_removed']:,} | {st['values_converted']:,} | "
                     + " | ".join(f"{st.get(f, 0):,}" for f in FLAG_WORDS) + f" | {eng} |")
    const = sorted({s for st in m.curation.values() for s in (st.get("constant_sensors") or [])})
    if const:
        lines += ["", f"Constant sensors (no information for learning): {', '.join(const)}."]
    bases = [(d, sensor, tb) for d, st in m.curation.items() for sensor, tb in (st.get("time_bases") or {}).items()]
    if bases:  # measurement files: each series' time axis, as the file and contract gave it (datalab.intake.measurement)
        lines += ["", "Time bases (columns `time_base`, `sample_rate_hz` of the table):", "",
                  "| delivery | sensor | time base | sample rate (Hz) |", "|---|---|---|---|"]
        lines += [f"| {d} | {cell(sensor)} | {cell(tb['time_base'])} | {tb['sample_rate_hz'] if tb['sample_rate_hz'] is not None else '-'} |"
                  for d, sensor, tb in bases]
    return lines
