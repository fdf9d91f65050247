"""The dataset card (datasheet) of a version, written for people.

An ML engineer reads it to know what the data is and may be used for; an
auditor reads it to know where it came from and how it was prepared.
"""

from __future__ import annotations

from datalab.contracts.contract import Contract
from datalab.contracts.policy import policy_words
from datalab.kinds import kind_of_manifest
from datalab.store.manifest import Manifest
from datalab.store.markdown import cell


def render_card(m: Manifest, contracts: dict[str, Contract], section: list[str] | None = None) -> str:
    """The card of version ``m``: what every kind shares, with ``section``, the kind's lines on how its data was prepared.

    ``section`` defaults to ``Kind.card_section(m)`` of the version's kind
    (``datalab.kinds``): the core knows no kind's preparation (the time
    series' table is ``datalab.timeseries.card``).
    """
    lines = [
        f"# {m.title} — version {m.version}",
        "",
        m.description,
        "",
        f"Dataset `{m.ref}` ({m.version_reason}), published {m.created_at} "
        f"to site **{m.site.name}** ({m.site.country}). {m.rows:,} rows in {len(m.files)} Parquet file(s).",
        "",
        "## Usage policy",
        *policy_words(m.policy),
        "",
        "## Provenance",
        "| contract | firm | version | rows |",
        "|---|---|---|---|",
    ]
    for c in m.lineage.contracts:
        lines.append(f"| {cell(c.id)} | {cell(c.tenant)} | {cell(c.version)} | {m.rows_per_contract.get(c.id, 0):,} |")
    lines += ["", f"Deliveries: {', '.join(m.lineage.deliveries)}."]
    if m.lineage.excluded:
        lines.append("")
        lines.append("Excluded deliveries:")
        lines += [f"- {e.delivery_id} ({e.contract}): {e.reason}" for e in m.lineage.excluded]
    # how the data was prepared: the kind's section (datalab.kinds: Kind.card_section)
    lines += section if section is not None else kind_of_manifest(m).card_section(m)
    lines += ["", "## Validation", "Great Expectations suites derived from each contract ran as blocking checks:", ""]
    for d, v in m.validation.items():
        lines.append(f"- {d}: {'passed' if v['success'] else 'FAILED'} ({v['evaluated']} expectations, {v['failed']} failed)")
    lines += ["", "## Schema", "| column | type |", "|---|---|"]
    lines += [f"| {cell(k)} | {cell(v)} |" for k, v in m.schema.items()]
    lines += [
        "", "## How to use",
        f"`datalab pull {m.ref} --purpose <purpose> --to DIR`, or in Python "
        f"`datalab.open('{m.dataset}', version='{m.version}', purpose='<purpose>')`.",
        "", "## Licence and citation",
        f"Honour every licence listed above ({', '.join(m.policy['license']) or 'none stated'}). Cite the providers: "
        + "; ".join(f"{contracts[c.id].name} ({c.tenant})" for c in m.lineage.contracts if c.id in contracts) + ".",
        "",
    ]
    return "\n".join(lines)
