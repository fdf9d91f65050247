"""Contracts load whole or not at all; lint names every problem with its field path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from datalab.contracts import contract
from datalab.errors import ContractError
from tests.conftest import CMAPSS, HYDRAULIC, ROOT, SPINDLE

SRC = ROOT / "data_contracts" / "providers" / "bavaria-spindle" / "spindle-telemetry.yaml"


def test_all_shipped_contracts_lint_clean() -> None:
    files = sorted((ROOT / "data_contracts" / "providers").glob("*/*.yaml"))
    assert len(files) >= 5
    for f in files:
        assert contract.lint(f) == [], f


def test_loaded_contract_reads_lab_terms(contracts) -> None:
    c = contracts[SPINDLE]
    assert c.tenant == "bavaria-spindle" and c.kind == "timeseries"
    assert [m.name for m in c.measurements] == ["spindle_temp", "oil_pressure", "vibration", "spindle_speed"]
    assert c.column("spindle_temp").unit == "Cel" and c.column("spindle_temp").maximum == 150
    assert c.policy.residency == ("DE",) and "model-training" in c.policy.purposes
    assert c.layout.timezone == "Europe/Berlin" and c.curation.expected_step == 1_000_000
    cm = contracts[CMAPSS]
    assert cm.layout.shape == "wide" and cm.layout.delimiter == "whitespace" and len(cm.layout.columns) == 26
    assert cm.column("s3").source_unit == "[degR]" and cm.column("s3").unit == "K"
    assert contracts[HYDRAULIC].layout.shape == "matrix"


def _broken(tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load(SRC.read_text())
    edit(doc)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["customProperties"][4]["value"].update(residency=["XX"]), "customProperties[4].value.residency[0]: unknown region 'XX'"),
        (lambda d: d["customProperties"][4]["value"].update(purposes=[]), "customProperties[4].value.purposes: required"),
        (lambda d: d["customProperties"][4]["value"].update(classification="secret"), "classification: must be one of"),
        (lambda d: d["customProperties"][4]["value"].update(retention_until="soon"), "retention_until: 'soon' is not a date"),
        (lambda d: d["schema"][0]["properties"][2].pop("customProperties"), "schema[0].properties[2] (spindle_temp).customProperties: a measurement needs a 'unit'"),
        (lambda d: d["schema"][0]["properties"][2]["customProperties"].__setitem__(0, {"property": "unit", "value": "furlong"}), "'furlong' is not a unit"),
        (lambda d: d["schema"][0]["properties"][2]["logicalTypeOptions"].update(minimum=500), "minimum 500 is greater than maximum 150"),
        (lambda d: d["schema"][0]["properties"][0]["logicalTypeOptions"].update(pattern="(["), "pattern: not a regular expression"),
        (lambda d: d["schema"][0]["properties"][2].update(logicalType="float"), "logicalType"),
        (lambda d: d.pop("tenant"), "tenant: required"),
        (lambda d: d.update(version="one"), "version: must be a semantic version"),
        (lambda d: d.update(unknownTopLevel=1), "unknownTopLevel"),
        (lambda d: d["schema"][0]["quality"][0].update(metric="vibes"), "schema[0].quality[0].metric: 'vibes' is not supported"),
        (lambda d: d["customProperties"][1]["value"].update(shape="diagonal"), "customProperties[1].value.shape: must be one of"),
    ],
)
def test_lint_names_field_path(tmp_path: Path, edit, expected: str) -> None:
    problems = contract.lint(_broken(tmp_path, edit))
    assert any(expected in p for p in problems), problems
    with pytest.raises(ContractError):
        contract.load(tmp_path / "c.yaml")


def test_lint_reports_every_problem_at_once(tmp_path: Path) -> None:
    def edit(d):
        d.pop("tenant")
        d["customProperties"][4]["value"]["residency"] = ["XX"]
        d["schema"][0]["properties"][3]["logicalTypeOptions"]["minimum"] = 999
    problems = contract.lint(_broken(tmp_path, edit))
    assert len(problems) >= 3


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("apiVersion: v3.0.2\nkind: DataContract\nschema: [\n  - name: x\n")
    problems = contract.lint(p)
    assert problems and "line" in problems[0] and "invalid YAML" in problems[0]


def test_not_utf8_contract(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    assert "not UTF-8" in contract.lint(p)[0]


def test_tenant_must_match_folder(tmp_path: Path) -> None:
    d = tmp_path / "providers" / "someone-else"
    d.mkdir(parents=True)
    (d / "x.yaml").write_text(SRC.read_text())
    # Issue 23: contracts load independently, so the misplaced one is reported, not raised.
    loaded = contract.load_all(tmp_path)
    assert not loaded
    assert "does not match its folder" in loaded.broken[str(d / "x.yaml")][0]


def test_lint_reports_each_mistake_once(tmp_path: Path) -> None:
    """Issue 20: the JSON-schema pass and the lab's pass saw the same field; one line per mistake."""
    def edit(d):
        d["version"] = 1.0  # wrong type and not a semantic version: one mistake
        d["status"] = "bogus"
        d["tenant"] = 12
        d["schema"][0]["properties"][2]["logicalType"] = "numbr"
    problems = contract.lint(_broken(tmp_path, edit))
    fields = [contract._field(p) for p in problems]
    assert len(problems) == 4 and len(set(fields)) == 4, problems
    assert {"version", "status", "tenant", "schema[0].properties[2].logicalType"} == set(fields)
    assert any("(spindle_temp)" in p for p in problems)  # the lab's message, which names the column, wins
