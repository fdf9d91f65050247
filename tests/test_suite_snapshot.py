"""The suites derived from the contracts, pinned: a refactoring of the derivation must not change them.

Every provider and example contract under ``data_contracts/`` (and one contract built here that
uses every kind of rule a contract can state) has its suite derived through its kind
(``datalab.kinds``) and compared, expectation by expectation and in order, with
``tests/snapshots/suites.json``: same types, kwargs, sources and sensors. Rewrite the snapshot
(``DATALAB_UPDATE_SNAPSHOTS=1``) only when the suite is meant to change, and say why in the commit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from datalab.contracts.contract import Column, Contract, load, load_all
from datalab.kinds import kind_of

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "suites.json"
BAVARIA = "urn:datalab:bavaria-spindle:spindle-telemetry"


def _custom(etype: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "custom", "engine": "great-expectations", "implementation": {"type": etype, "kwargs": kwargs}}


def _every_rule(c: Contract) -> Contract:
    """``c`` with a custom rule on every property and every table-level rule the derivation reads."""
    mean = _custom("expect_column_mean_to_be_between", {"min_value": 10, "max_value": 90})
    extra = {
        "measurement": (mean, {"metric": "duplicateValues", "mustBe": 0},
                        {"metric": "rowCount", "mustBeGreaterThan": 1}, {"metric": "rowCount", "mustNotBe": 3}),
        "entity": (_custom("expect_column_value_lengths_to_be_between", {"min_value": 1}),),
        "time": (_custom("expect_column_values_to_be_increasing", {}),),
    }
    columns = tuple(
        dataclasses.replace(col, quality=(*col.quality, *extra.get(col.role, (mean,))),
                            enum=(1, "M-2") if col.role == "entity" else col.enum)
        for col in c.columns
    )
    invalid = {"metric": "invalidValues", "mustBeLessThan": 2, "unit": "percent"}
    nulls = {"metric": "missingValues", "mustBeLessThan": 10, "unit": "rows"}
    columns += (
        dataclasses.replace(c.measurements[0], name="bounded", source_name="bounded", required=False,
                            minimum=0.0, exclusive_minimum=0.0, exclusive_maximum=5.0, valid_values=(1.0, 2.0),
                            quality=(invalid, nulls, "not a rule", {"type": "text"})),
        Column("shift", "shift", "string", "attribute", required=True, pattern="^[A-C]$", enum=("A", "B"),
               valid_values=("A", "B", "C"), quality=(invalid, nulls, mean)),
        Column("load_pct", "load_pct", "number", "attribute", minimum=0, maximum=100,
               quality=({"metric": "invalidValues", "mustBeGreaterThan": 1}, nulls)),
        Column("badge", "badge", "string", "attribute", pattern="^B[0-9]+$", enum=("B1",), valid_values=("B1",),
               personal=True),
    )
    return dataclasses.replace(c, columns=columns, quality=(
        {"metric": "rowCount", "mustBeBetween": [10, 1000]},
        {"metric": "rowCount", "mustBeLessThan": 5000},
        {"metric": "rowCount", "mustNotBeBetween": [1, 2]},
        {"metric": "nullValues", "mustBeLessThan": 2, "unit": "percent"},
        {"metric": "duplicateValues", "mustBe": 0},
        {"metric": "invalidValues", "mustBeLessOrEqualTo": 1, "unit": "percent"},
        {"type": "text", "description": "for people only"},
        _custom("expect_column_values_to_not_be_null", {"column": "raw_value"}),
        "not a rule",
    ))


def contracts() -> dict[str, Contract]:
    """Every contract the snapshot pins, by a stable name."""
    found = load_all(ROOT / "data_contracts")
    out: dict[str, Contract] = {c.id: c for c in found.values()}
    for path in sorted((ROOT / "data_contracts" / "examples").rglob("*.yaml")):
        c = load(path)
        out[f"{c.id} ({path.relative_to(ROOT).as_posix()})"] = c
    out[f"{BAVARIA} (every rule)"] = _every_rule(found[BAVARIA])
    return out


def derived() -> dict[str, list[dict[str, Any]]]:
    """Each contract's suite as the JSON-safe dicts the GX runner fingerprints (``ExpectationSpec.to_dict``).

    The name of the derivation's rule that wrote an expectation (``rule``) is left out: it labels the
    expectation for people and may be renamed; what GX runs may not change.
    """
    return {name: [{k: v for k, v in spec.to_dict().items() if k != "rule"} for spec in kind_of(c).suite(c)]
            for name, c in sorted(contracts().items())}


def test_every_derived_suite_matches_its_snapshot() -> None:
    now = json.loads(json.dumps(derived()))
    if os.environ.get("DATALAB_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        pytest.skip("snapshot rewritten")
    pinned = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert sorted(now) == sorted(pinned), "the set of contracts changed"
    for name, specs in pinned.items():
        got = now[name]
        for i, (want, have) in enumerate(zip(specs, got, strict=False)):
            assert have == want, f"{name}: expectation {i} differs"
        assert len(got) == len(specs), f"{name}: {len(got)} expectations, snapshot has {len(specs)}"


def test_the_snapshot_covers_every_rule() -> None:
    """The snapshot is worth something only if it holds every kind of expectation the derivation writes."""
    pinned = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    types = {s["type"] for specs in pinned.values() for s in specs}
    assert {"expect_table_columns_to_match_set", "expect_table_row_count_to_be_between",
            "expect_compound_columns_to_be_unique", "expect_column_values_to_match_regex",
            "expect_column_mean_to_be_between", "expect_column_values_to_be_increasing"} <= types
    sources = {s["source"] for specs in pinned.values() for s in specs}
    assert any("personal" in s for s in sources) and any("validValues" in s for s in sources)


def test_every_timeseries_expectation_names_the_rule_that_wrote_it() -> None:
    from datalab.timeseries import suite

    for name, c in contracts().items():
        if c.kind != "timeseries":
            continue
        for spec in kind_of(c).suite(c):
            assert spec.rule and callable(getattr(suite, spec.rule, None)), (name, spec.type, spec.rule)
