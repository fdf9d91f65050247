"""The dataset card (datasheet) of a version, written for people.

An ML engineer reads it to know what the data is and may be used for; an
auditor reads it to know where it came from and how it was prepared.
"""

from __future__ import annotations

from typing import Any

from datalab.contracts.contract import Contract
from datalab.contracts.policy import policy_words

FLAG_WORDS = {
    "flag_missing": "missing values",
    "flag_unit_unknown": "unknown units",
    "flag_out_of_range": "out of the contract's range",
    "flag_key_duplicate": "key duplicates (same entity, time, sensor)",
    "flag_outlier": "robust outliers",
    "flag_gap_before": "gaps before the reading",
    "flag_late": "late-arriving readings",
}


def render_card(m: dict[str, Any], contracts: dict[str, Contract], section: list[str] | None = None) -> str:
    lines = [
        f"# {m['title']} — version {m['version']}",
        "",
        m.get("description") or "",
        "",
        f"Dataset `{m['dataset']}@{m['version']}` ({m['version_reason']}), published {m['created_at']} "
        f"to site **{m['site']['name']}** ({m['site']['country']}). {m['rows']:,} rows in {len(m['files'])} Parquet file(s).",
        "",
        "## Usage policy",
        *policy_words(m["policy"]),
        "",
        "## Provenance",
        "| contract | firm | version | rows |",
        "|---|---|---|---|",
    ]
    for c in m["lineage"]["contracts"]:
        lines.append(f"| {c['id']} | {c['tenant']} | {c['version']} | {m['rows_per_contract'].get(c['id'], 0):,} |")
    lines += ["", f"Deliveries: {', '.join(m['lineage']['deliveries'])}."]
    if m["lineage"]["excluded"]:
        lines.append("")
        lines.append("Excluded deliveries:")
        lines += [f"- {e['delivery_id']} ({e['contract']}): {e['reason']}" for e in m["lineage"]["excluded"]]
    # how the data was prepared: the kind's section (datalab.kinds: Kind.card_section), else the series table's
    lines += section if section is not None else _preparation(m)
    lines += ["", "## Validation", "Great Expectations suites derived from each contract ran as blocking checks:", ""]
    for d, v in m["validation"].items():
        lines.append(f"- {d}: {'passed' if v['success'] else 'FAILED'} ({v['evaluated']} expectations, {v['failed']} failed)")
    lines += ["", "## Schema", "| column | type |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m["schema"].items()]
    lines += [
        "", "## How to use",
        f"`datalab pull {m['dataset']}@{m['version']} --purpose <purpose> --to DIR`, or in Python "
        f"`datalab.open('{m['dataset']}', version='{m['version']}', purpose='<purpose>')`.",
        "", "## Licence and citation",
        f"Honour every licence listed above ({', '.join(m['policy']['license']) or 'none stated'}). Cite the providers: "
        + "; ".join(f"{contracts[c['id']].name} ({c['tenant']})" for c in m["lineage"]["contracts"] if c["id"] in contracts) + ".",
        "",
    ]
    return "\n".join(lines)


def _preparation(m: dict[str, Any]) -> list[str]:
    """How a curated long table was prepared: per delivery, rows in and out, conversions and flags."""
    lines: list[str] = []
    lines += ["", "## Preparation", "Exact duplicate rows removed; units converted to the contract's canonical units; every other defect is kept and flagged:", ""]
    lines += ["| delivery | rows in | rows out | duplicates removed | converted | " + " | ".join(FLAG_WORDS.values()) + " | engine |",
              "|---" * (6 + len(FLAG_WORDS)) + "|"]
    for d, st in m["curation"].items():
        eng = (st.get("engine") or {}).get("engine", "?")
        lines.append(f"| {d} | {st['rows_in']:,} | {st['rows_out']:,} | {st['exact_duplicates_removed']:,} | {st['values_converted']:,} | "
                     + " | ".join(f"{st.get(f, 0):,}" for f in FLAG_WORDS) + f" | {eng} |")
    const = sorted({s for st in m["curation"].values() for s in (st.get("constant_sensors") or [])})
    if const:
        lines += ["", f"Constant sensors (no information for learning): {', '.join(const)}."]
    bases = [(d, sensor, tb) for d, st in m["curation"].items() for sensor, tb in (st.get("time_bases") or {}).items()]
    if bases:  # measurement files: each series' time axis, as the file and contract gave it (datalab.intake.measurement)
        lines += ["", "Time bases (columns `time_base`, `sample_rate_hz` of the table):", "",
                  "| delivery | sensor | time base | sample rate (Hz) |", "|---|---|---|---|"]
        lines += [f"| {d} | {sensor} | {tb['time_base']} | {tb['sample_rate_hz'] if tb['sample_rate_hz'] is not None else '-'} |"
                  for d, sensor, tb in bases]
    return lines


preparation_section = _preparation  # the time-series kind's card section (datalab/timeseries/kind.py)
