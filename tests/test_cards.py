"""The cards of a version say one thing: one policy wording, one list of flags and their meanings.

The datasheet (``datalab.store.datasheet``), the basic card
(``datalab.store.card``, used by the CAD kind) and the time-series kind's
preparation table (``datalab.timeseries.card``) once each kept their own
copy of both, and the copies drifted apart.
"""

from __future__ import annotations

from typing import Any

from datalab.contracts.policy import Policy, combine, policy_words
from datalab.store import card, datasheet
from datalab.store.manifest import Manifest

A = "urn:datalab:a:series"
B = "urn:datalab:b:series"


def _policy() -> dict[str, Any]:
    a = Policy.from_dict({"residency": ["EU"], "purposes": ["research", "model-training"],
                          "prohibited_purposes": ["military"], "classification": "confidential",
                          "license": ["CC-BY-4.0"], "retention_until": "2030-01-01", "personal_data": True,
                          "export_control": True}, A)
    b = Policy.from_dict({"residency": ["DE", "FR"], "purposes": ["research"]}, B)
    return combine([a, b]).to_dict()


def _manifest(policy: dict[str, Any], curation: dict[str, Any] | None = None) -> Manifest:
    return Manifest.from_dict({"title": "Series", "description": "", "version": "1.0.0", "dataset": "series", "version_reason": "first version",
            "created_at": "2026-01-01T00:00:00Z", "site": {"name": "lyon", "country": "FR", "operator": "lab"},
            "rows": 10, "rows_per_contract": {A: 10}, "files": [], "snapshot_id": 1, "policy": policy,
            "lineage": {"contracts": [{"id": A, "tenant": "a", "version": "1.0.0"}], "deliveries": ["d-1"], "excluded": []},
            "curation": curation or {}, "validation": {}, "schema": {"time": "Datetime(time_unit='us', time_zone='UTC')"}})


def _facts() -> dict[str, Any]:
    return {"rows": 10, "firms": [], "machines": [], "sensors": [], "collection": [], "flags": {}, "firm_shares": [],
            "machine_type_shares": [], "condition_shares": [], "warnings": [], "gaps": []}


def _policy_lines(md: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("## Usage policy"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("- "))
    return lines[start + 1:end]


def test_the_card_and_the_datasheet_show_the_same_policy_lines():
    p = _policy()
    m = _manifest(p)
    basic = _policy_lines(card.render_card(m, {}, []))
    sheet = _policy_lines(datasheet.render_markdown(m, _facts(), {}))
    assert basic == sheet == policy_words(p)
    assert len(basic) == 8  # every rule of this policy has its line
    assert basic[0] == "- **Where**: stored and processed only in DE, FR (set by urn:datalab:b:series)."
    assert "- **Never for**: military (set by urn:datalab:a:series)." in basic
    assert any(ln.startswith("- **Deleted after**: 2030-01-01") for ln in basic)


def test_a_policy_without_sources_still_reads():
    """A policy stored before rules named their inputs (no ``sources``) renders without them."""
    p = {**_policy(), "sources": {}}
    assert policy_words(p)[0] == "- **Where**: stored and processed only in DE, FR (set by -)."


def test_the_flags_are_named_with_the_words_of_the_schema():
    """The series' preparation table and the datasheet head their flag columns with ``schema.FLAGS``' meanings."""
    from datalab.timeseries import schema
    from datalab.timeseries.card import preparation_section

    words = [f.meaning for f in schema.FLAGS]
    st = {"rows_in": 3, "rows_out": 2, "exact_duplicates_removed": 1, "values_converted": 0,
          **{f.column: i for i, f in enumerate(schema.FLAGS)}, "engine": {"engine": "cpu"}}
    m = _manifest(_policy(), {"d-1": st})
    prep = preparation_section(m)
    assert prep[4] == "| delivery | rows in | rows out | duplicates removed | converted | " + " | ".join(words) + " | engine |"
    assert prep[6] == "| d-1 | 3 | 2 | 1 | 0 | " + " | ".join(str(i) for i in range(len(words))) + " | cpu |"
    md = datasheet.render_markdown(m, {**_facts(), "flags": {"flag_late": 4}}, {})
    head = next(ln for ln in md.splitlines() if ln.startswith("| delivery | readings in"))
    assert head.endswith("| values converted | " + " | ".join(words) + " |")
    assert "| late-arriving readings | 4 |" in md
    assert card.render_card(m, {}).count("\n## Preparation\n") == 1  # the kind's section, found through the registry


def test_a_pipe_or_line_break_in_a_firms_value_stays_in_its_cell():
    """A machine id like ``=cmd|' /C calc'!A0`` or a value with a line break: one cell, in Markdown and in HTML."""
    evil = "=cmd|' /C calc'!A0\nrow"
    rows = datasheet._table(["machine", "rows"], [[evil, 3], ["a\\b", 4]])
    assert all(len(datasheet._cells(r)) == 2 for r in (rows[0], *rows[2:]))
    assert datasheet._cells(rows[2]) == ["=cmd|' /C calc'!A0 row", "3"] and datasheet._cells(rows[3]) == ["a\\b", "4"]
    page = datasheet.render_html("\n".join(rows), "t")
    assert "<td>=cmd|&#x27; /C calc&#x27;!A0 row</td><td>3</td>" in page
    m = _manifest(_policy()).replace(schema={"a|b": "String"})
    md = card.render_card(m, {}, [])
    assert "| a\\|b | String |" in md
