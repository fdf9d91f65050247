"""The manifest as a typed record: read from JSON exactly as written, and a clear error for a broken one."""

from __future__ import annotations

import json

import pytest

from datalab.errors import IntegrityError
from datalab.store.manifest import DataFile, Manifest

DOC = {
    "dataset": "plant-telemetry", "title": "Plant telemetry", "description": "", "version": "1.0.1",
    "version_reason": "patch: new data", "created_at": "2026-12-05T10:00:00Z",
    "site": {"name": "garching", "country": "DE", "operator": "LRZ"}, "table": "datalab.plant_telemetry__v1",
    "snapshot_id": 7, "schema": {"value": "Float64"}, "rows": 30, "rows_per_contract": {"urn:a": 30},
    "files": [{"path": "warehouse/a.parquet", "sha256": "ab" * 32, "bytes": 100, "rows": 30}],
    "lineage": {"contracts": [{"id": "urn:a", "version": "1.0.0", "tenant": "a", "path": "a.yaml"}],
                "deliveries": ["d-1"], "excluded": [{"delivery_id": "d-2", "contract": "urn:a", "reason": "validation failed"}]},
    "curation": {"d-1": {"rows_in": 31}}, "validation": {"d-1": {"success": True, "evaluated": 5, "failed": 0}},
    "policy": {"purposes": ["research"]}, "sovereignty": {"exclusions": []}, "seconds": 1.5,
    "cad": {"files": []}, "datasheet": {"files": ["card.md"], "warnings": 0, "gaps": 0},
}


def test_round_trip_keeps_every_key_in_order() -> None:
    m = Manifest.from_dict(json.loads(json.dumps(DOC)))
    assert m.to_dict() == DOC and list(m.to_dict()) == list(DOC)
    assert m.files == (DataFile("warehouse/a.parquet", "ab" * 32, 100, 30),)
    assert m.lineage.excluded[0].reason == "validation failed" and m.contract_ids == ["urn:a"]
    assert m.section("cad") == {"files": []} and m.ref == "plant-telemetry@1.0.1"
    # what is set later goes after what was read
    w = m.replace(withdrawn={"at": "x", "reason": "y", "deliveries": []})
    assert list(w.to_dict())[-1] == "withdrawn" and w.to_dict()["datasheet"] == DOC["datasheet"]


def test_a_replicas_manifest_keeps_its_own_shape() -> None:
    """A replica's manifest has no site, table or contracts (the peer keeps those): nothing is invented."""
    doc = {"lineage": {"deliveries": []}, "dataset": "x", "version": "1.0.0", "rows": 2, "schema": {}, "policy": {},
           "snapshot_id": 3, "files": [{"sha256": "cd" * 32, "bytes": 5, "rows": 2, "path": "versions/x/1.0.0/part-00000.parquet"}],
           "replica": {"site": "munich", "purpose": "research"}}
    m = Manifest.from_dict(doc)
    # its lineage is completed with empty lists, nothing else changes
    assert m.to_dict() == {**doc, "lineage": {"contracts": [], "deliveries": [], "excluded": []}} and m.replica == {"site": "munich", "purpose": "research"} and m.site.name == ""


@pytest.mark.parametrize(("broken", "words"), [
    ({k: v for k, v in DOC.items() if k != "files"}, "field 'files' is missing"),
    ({**DOC, "rows": "30"}, "field 'rows' must be int, not str"),
    ({**DOC, "files": [{"path": "a"}]}, "manifest.files[0]: field 'sha256' is missing"),
    ({**DOC, "lineage": {"contracts": [{"version": "1"}]}}, "manifest.lineage.contracts[0]: field 'id' is missing"),
    ([], "manifest must be a JSON object, not list"),
])
def test_a_broken_manifest_names_the_field(broken: object, words: str) -> None:
    with pytest.raises(IntegrityError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Manifest.from_dict(broken)
