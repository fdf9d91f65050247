"""CAD end to end through a real Dagster instance: every real CAD file pushed, curated or rejected,
validated, published with its files, pulled with checksums and clearance enforced."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from datalab.cad import curate
from datalab.config import settings
from datalab.errors import PolicyRefused
from datalab.intake import landing
from datalab.store import catalog as cat
from datalab.store import pull, state
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TOOLING = "urn:datalab:lyon-presses:tooling-cad"
GOOD = ["step/featuretype.STEP", "step/nist_ctc_01_asme1_rd.stp", "step/nist_ftc_11_asme1_rb.stp", "stl/featuretype.STL",
        "stl/busted.STL", "dxf/1002_tray_bottom.DXF", "dxf/wrench.dxf"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cadlab(tmp_path_factory: pytest.TempPathFactory, realdata: Path):
    """One lab for the module: the real CAD files pushed, run through Dagster and published once."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("cadlab") / "lab"
    mp.setenv("DATALAB_HOME", str(home))
    mp.setenv("DATALAB_CONTRACTS", str(ROOT / "data_contracts"))
    for k in ("DATALAB_SITE", "DATALAB_CATALOG_URL", "DATALAB_CLEARANCE", "DATALAB_EXPORT_CLEARED"):
        mp.delenv(k, raising=False)
    from datalab.contracts import contract
    from pipelines import runner

    c = contract.load_all(ROOT / "data_contracts")[TOOLING]
    cad = realdata / "cad"
    r_good = landing.push(c, [cad / p for p in GOOD], actor="firm:lyon-presses")
    r_loop = landing.push(c, [cad / "dxf/broken_loop.dxf"], actor="firm:lyon-presses")
    r_empty = landing.push(c, [cad / "stl/stl_empty_bin.stl"], actor="firm:lyon-presses")
    work = tmp_path_factory.mktemp("inbox")
    # the same washer again under another name (exact duplicate across deliveries)
    shutil.copyfile(cad / "step/nist_ftc_11_asme1_rb.stp", work / "washer_rev2.stp")
    r_dup = landing.push(c, [work / "washer_rev2.stp"], actor="firm:lyon-presses")
    # a STEP file named .stl: accepted by content, but the suite's "format matches content" blocks it
    shutil.copyfile(cad / "step/featuretype.STEP", work / "featuretype_export.stl")
    r_misnamed = landing.push(c, [work / "featuretype_export.stl"], actor="firm:lyon-presses")
    runs = runner.run_pending(TOOLING)
    pub = runner.publish("tooling-cad")
    yield {"c": c, "home": home, "good": r_good, "loop": r_loop, "empty": r_empty, "dup": r_dup,
           "misnamed": r_misnamed, "runs": runs, "pub": pub, "runner": runner, "cad": cad}
    mp.undo()


def test_every_real_cad_file_is_curated_or_rejected(cadlab) -> None:
    assert cadlab["good"].accepted and cadlab["good"].rows == 7
    assert [f.format for f in cadlab["good"].files] == ["step", "step", "step", "stl-binary", "stl-binary", "dxf", "dxf"]
    (loop,) = cadlab["loop"].reasons
    assert loop == ("broken_loop.dxf: open_outline: 1 outline(s) whose ends do not meet; dangling endpoints at "
                    "(1, 0), (1.1, 0) (drawing units) (rule: cad.require_closed_outlines)")
    assert cadlab["empty"].reasons == [
        "stl_empty_bin.stl: binary STL with 0 triangles: the file holds no geometry (rule: no empty files)"]
    # rejected files are kept in quarantine, content-addressed
    s = settings()
    q = s.landing / "lyon-presses" / "quarantine"
    assert {p.name for p in q.rglob("*") if p.is_file()} == {
        _sha(cadlab["cad"] / "dxf/broken_loop.dxf"), _sha(cadlab["cad"] / "stl/stl_empty_bin.stl")}


def _rows(delivery_id: str) -> dict[str, dict]:
    s = settings()
    df = pl.read_parquet(curate.curated_path(cadlab_contract(), delivery_id, s))
    return {r["file_name"]: r for r in df.to_dicts()}


def cadlab_contract():
    from datalab.contracts import contract

    return contract.load_all(ROOT / "data_contracts")[TOOLING]


def test_features_are_the_real_numbers(cadlab) -> None:
    rows = _rows(cadlab["good"].delivery_id)
    w = rows["nist_ftc_11_asme1_rb.stp"]
    assert (w["faces"], w["edges"], w["solids"], w["schema"]) == (6, 12, 1, "AP203")
    assert w["volume_mm3"] == pytest.approx(5129.386, abs=1e-3)
    assert (w["bbox_x_mm"], w["bbox_y_mm"], w["bbox_z_mm"]) == pytest.approx((63.0, 63.0, 3.0), abs=1e-6)
    f = rows["featuretype.STEP"]
    assert (f["declared_unit"], f["unit_source"], f["schema"], f["originating_system"], f["faces"]) == (
        "inch", "file", "AP214", "SolidWorks 2013", 96)
    assert (f["bbox_x_mm"], f["bbox_y_mm"], f["bbox_z_mm"]) == pytest.approx((127.0, 63.5, 34.925), abs=1e-6)
    assert f["volume_mm3"] == pytest.approx(190531.995, abs=1e-2)
    m = rows["featuretype.STL"]  # the supplier's mesh, inch from the contract
    assert (m["length_unit"], m["unit_source"], m["triangles"], m["closed"]) == ("inch", "contract", 3476, True)
    assert (m["bbox_x_mm"], m["bbox_y_mm"], m["bbox_z_mm"]) == pytest.approx((127.0, 63.5, 34.925), abs=1e-4)
    assert m["volume_mm3"] == pytest.approx(f["volume_mm3"], rel=1e-3)
    assert "unit_from_contract" in m["flags"]
    # the STEP and STL of the featuretype part are found as the same part, nothing else matches
    d = cadlab["good"].delivery_id
    assert m["same_part_as"] == f"{d}/featuretype.STEP" and f["same_part_as"] == f"{d}/featuretype.STL"
    assert rows["busted.STL"]["zero_normals"] == 3878 and "zero_normals" in rows["busted.STL"]["flags"]
    assert rows["nist_ctc_01_asme1_rd.stp"]["faces"] == 139
    t = rows["1002_tray_bottom.DXF"]
    assert (t["schema"], t["length_unit"], json.loads(t["entity_types"])) == ("R2000", "inch", {"CIRCLE": 22, "ARC": 12, "LINE": 12})
    assert t["bbox_x_mm"] == pytest.approx(14 * 25.4, abs=1e-6)
    assert all(r["export_control"] is True and r["classification"] == "confidential" for r in rows.values())
    assert all(r["thumbnail"] and r["thumbnail"].startswith("thumbs/") for r in rows.values())


def test_duplicates_and_blocking_suite(cadlab) -> None:
    dup = _rows(cadlab["dup"].delivery_id)["washer_rev2.stp"]
    assert dup["duplicate_of"] == f"{cadlab['good'].delivery_id}/nist_ftc_11_asme1_rb.stp"
    by = {r.delivery_id: r for r in cadlab["runs"]}
    assert by[cadlab["good"].delivery_id].validation_ok and by[cadlab["dup"].delivery_id].validation_ok
    bad = by[cadlab["misnamed"].delivery_id]
    assert bad.validation_ok is False
    v = state.get(cadlab["misnamed"].delivery_id)["validation"]
    failed = [r for r in v["results"] if not r["success"]]
    assert [r["type"] for r in failed] == ["expect_column_pair_values_to_be_equal"]
    # the three accepted deliveries went through Dagster in one run over their range (DATALAB_RUN_BATCH)
    import dagster as dg

    from assets.common import RANGE_END, RANGE_START
    from pipelines.definitions import ingest_job_name

    [run] = cadlab["runner"].instance().get_runs(filters=dg.RunsFilter(job_name=ingest_job_name(cadlab["c"])))
    assert (run.tags[RANGE_START], run.tags[RANGE_END]) == (cadlab["good"].delivery_id, cadlab["misnamed"].delivery_id)
    assert len(cadlab["runs"]) == 3


def test_dagster_metadata_shows_thumbnails(cadlab) -> None:
    import dagster as dg

    inst = cadlab["runner"].instance()
    ev = inst.get_latest_materialization_event(dg.AssetKey(["lyon_presses", "tooling_cad", "curated"]))
    md = ev.asset_materialization.metadata
    assert "data:image/png;base64," in md["thumbnails"].value
    assert md["export_control"].value is True


def test_published_version_carries_files_and_tags(cadlab) -> None:
    s = settings()
    from datalab.store.publish import iceberg_catalog, read_manifest

    m = read_manifest("tooling-cad", "1.0.0").to_dict()
    assert m["rows"] == 8 and m["policy"]["export_control"] and m["policy"]["classification"] == "confidential"
    assert [e["delivery_id"] for e in m["lineage"]["excluded"]] == [cadlab["misnamed"].delivery_id]
    assert m["cad"]["export_control"] is True and len(m["cad"]["files"]) == 8
    tbl = iceberg_catalog(s).load_table(m["table"])
    assert tbl.properties["datalab.export_control"] == "true" and tbl.properties["datalab.classification"] == "confidential"
    card = (s.versions / "tooling-cad" / "1.0.0" / "card.md").read_text()
    assert "![featuretype.STEP](files/thumbs/" in card and "export-controlled: **yes**" in card


def test_pull_enforces_clearance_and_verifies_checksums(cadlab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PolicyRefused, match="rule 'export_control'"):
        pull.pull("tooling-cad@1.0.0", "research", tmp_path, actor="team:ml")
    monkeypatch.setenv("DATALAB_EXPORT_CLEARED", "1")
    monkeypatch.setenv("DATALAB_CLEARANCE", "internal")
    with pytest.raises(PolicyRefused, match=r"rule .classification.*confidential"):
        pull.pull("tooling-cad@1.0.0", "research", tmp_path, actor="team:ml")
    monkeypatch.setenv("DATALAB_CLEARANCE", "confidential")
    with pytest.raises(PolicyRefused, match="model-training"):
        pull.pull("tooling-cad@1.0.0", "model-training", tmp_path, actor="team:ml")
    res = pull.pull("tooling-cad@1.0.0", "research", tmp_path, actor="team:ml")
    df = pl.read_parquet(list((res.directory / "data").glob("*.parquet")))
    assert df.height == 8 and df["export_control"].all() and set(df["classification"]) == {"confidential"}
    files = {p.name: p for p in (res.directory / "files").iterdir() if p.is_file()}
    for rel in GOOD:
        src = cadlab["cad"] / rel
        got = files[f"{_sha(src)[:12]}-{src.name}"]
        assert got.read_bytes() == src.read_bytes()
    assert len(list((res.directory / "files" / "thumbs").glob("*.png"))) == 7  # the duplicate shares its thumbnail
    # a tampered object is caught on pull
    s = settings()
    m = json.loads((res.directory / "manifest.json").read_text())
    obj = s.home / m["cad"]["files"][0]["path"]
    obj.chmod(0o644)
    obj.write_bytes(b"tampered")
    from datalab.errors import IntegrityError

    with pytest.raises(IntegrityError, match="does not match"):
        pull.pull("tooling-cad@1.0.0", "research", tmp_path / "again", actor="team:ml")
    with cat.Catalog(s.catalog_url).begin() as conn:
        outcomes = [r.decision for r in conn.execute(sa.select(cat.audit).where(cat.audit.c.action == "pull"))]
    assert outcomes.count("refused") == 3 and "allowed" in outcomes and "failed" in outcomes
