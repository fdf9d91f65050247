"""End to end through a real Dagster instance in a temp dir: push -> run -> publish -> pull."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import datalab
from datalab.config import settings
from datalab.errors import DatalabError, PolicyRefused
from datalab.intake import landing
from datalab.store import catalog as cat
from datalab.store import publish, pull, state
from datalab.timeseries import sample
from tests.conftest import CMAPSS, HYDRAULIC, PRESS, PUMPS, ROOT, SPINDLE

pytestmark = pytest.mark.slow
START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _push_batch(contracts, tmp: Path, seed: int, start: dt.datetime, rows: int = 3_000, ids=(SPINDLE, PRESS, PUMPS), defects=None):
    recs = []
    for i, cid in enumerate(ids):
        c = contracts[cid]
        p = sample.write(sample.generate(c, rows, seed=seed + i, start=start, defects=defects), tmp / f"{c.product}-{seed}.csv")
        recs.append(landing.push(c, [p], actor=f"firm:{c.tenant}"))
    return recs


def test_spine_end_to_end(lab: Path, tmp_path: Path, contracts) -> None:
    from pipelines import runner

    recs = _push_batch(contracts, tmp_path, 10, START)
    assert all(r.accepted for r in recs)
    runs = runner.run_pending()
    assert [r.validation_ok for r in runs] == [True, True, True], [(r.delivery_id, r.success, r.message) for r in runs]
    # the Dagster instance recorded the materialisations with their metadata
    import dagster as dg

    inst = runner.instance()
    ev = inst.get_latest_materialization_event(dg.AssetKey(["bavaria_spindle", "spindle_telemetry", "curated"]))
    md = ev.asset_materialization.metadata
    assert md["rows_in"].value > 0 and md["engine"].value == "cpu" and "exact_duplicates_removed" in md
    assert md["series_buckets"].value == 1 and md["long_series"].value == 0 and md["long_series_chunks"].value == 0
    v1 = runner.publish("plant-telemetry")
    assert v1["version"] == "1.0.0" and v1["new_version"]
    assert v1["residency"] == "DE" and "model-training" not in v1["purposes"]
    again = runner.publish("plant-telemetry")
    assert not again["new_version"] and again["version"] == "1.0.0"
    _push_batch(contracts, tmp_path, 20, START + dt.timedelta(hours=1))
    assert all(r.validation_ok for r in runner.run_pending())
    v2 = runner.publish("plant-telemetry")
    assert v2["version"] == "1.0.1" and v2["rows"] > v1["rows"]
    # pull both, checksums verified against the manifest, old version bit for bit
    a = pull.pull("plant-telemetry@1.0.0", "research", tmp_path / "pull-a", actor="team:ml")
    b = pull.pull("plant-telemetry@1.0.1", "predictive-maintenance", tmp_path / "pull-b", actor="team:ml")
    again_a = pull.pull("plant-telemetry@1.0.0", "research", tmp_path / "pull-c", actor="team:ml")
    assert [_sha(p) for p in a.files] == [_sha(p) for p in again_a.files]
    m1 = json.loads((a.directory / "manifest.json").read_text())
    assert [f["sha256"] for f in m1["files"]] == [_sha(p) for p in a.files]
    assert (a.directory / "card.md").read_text().startswith("# Plant telemetry")
    import polars as pl

    assert pl.read_parquet(a.files).height == m1["rows"] == v1["rows"]
    assert pl.read_parquet(b.files).height == v2["rows"]
    assert datalab.open("plant-telemetry", version="1.0.1", purpose="research").select(pl.len()).collect().item() == v2["rows"]
    # personal data never in clear, lineage names every delivery
    df = pl.read_parquet(b.files)
    assert df["operator_badge"].drop_nulls().str.contains(r"^ps_").all()
    assert set(m1["lineage"]["deliveries"]) == {r.delivery_id for r in recs}
    # a purpose outside the policy is refused, names the rule and input, and is audited
    with pytest.raises(PolicyRefused, match=r"prohibited_purposes.*lyon-presses"):
        pull.pull("plant-telemetry@1.0.1", "model-training", tmp_path / "pull-d", actor="team:ml")
    refusals = [e for e in cat.Catalog(settings().catalog_url).audit_entries(action="pull") if e.decision == "refused"]
    assert refusals and refusals[-1].detail["purpose"] == "model-training" and refusals[-1].actor == "team:ml"
    assert cat.Catalog(settings().catalog_url).verify_audit() == []


def test_failing_expectation_blocks_publishing(lab: Path, tmp_path: Path, contracts) -> None:
    from pipelines import runner

    _push_batch(contracts, tmp_path, 30, START, ids=(PUMPS,))
    runner.run_pending()
    s = settings()
    bad = _push_batch(contracts, tmp_path, 40, START + dt.timedelta(hours=2), ids=(PUMPS,), defects=sample.Defects(spikes=0.2))[0]
    assert bad.accepted  # structurally fine: the spikes are numbers
    runs = runner.run_pending()
    assert [r.validation_ok for r in runs] == [False]
    st = state.get(bad.delivery_id, s)
    assert st["stage"] == "failed"
    failed = [r for r in st["validation"]["results"] if not r["success"]]
    assert any(r.get("sensor") and r["unexpected_count"] > 0 for r in failed)
    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    (spec / "datasets" / "pumps-only.yaml").write_text(yaml.safe_dump({"name": "pumps-only", "site": "kajaani", "inputs": [PUMPS]}))
    import os

    os.environ["DATALAB_CONTRACTS"] = str(spec)
    try:
        res = publish.publish("pumps-only")
        assert res.created
        assert bad.delivery_id not in res.manifest.lineage.deliveries
        assert {e.delivery_id: e.reason for e in res.manifest.lineage.excluded}[bad.delivery_id] == "validation failed"
    finally:
        os.environ["DATALAB_CONTRACTS"] = str(ROOT / "data_contracts")


def _dataset(tmp_path: Path, monkeypatch, name: str, site: str, inputs: list[str], drop_columns: list[str] | None = None) -> Path:
    """A copy of the repository's contracts with dataset ``name`` added (the lab reads it); the dataset file."""
    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec, dirs_exist_ok=True)
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    ds = spec / "datasets" / f"{name}.yaml"
    ds.write_text(yaml.safe_dump({"name": name, "site": site, "inputs": inputs, **({"drop_columns": drop_columns} if drop_columns else {})}))
    return ds


def test_schema_change_bumps_minor_and_major(lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    from pipelines import runner

    ds = _dataset(tmp_path, monkeypatch, "mini", "munich", [PUMPS])
    _push_batch(contracts, tmp_path, 50, START, ids=(PUMPS, PRESS))
    runner.run_pending()
    v1 = publish.publish("mini")
    assert v1.version == "1.0.0"
    ds.write_text(yaml.safe_dump({"name": "mini", "site": "munich", "inputs": [PUMPS, PRESS]}))
    v2 = publish.publish("mini")
    assert v2.version == "1.1.0" and "operator_badge" in v2.message
    ds.write_text(yaml.safe_dump({"name": "mini", "site": "munich", "inputs": [PUMPS, PRESS], "drop_columns": ["raw_unit"]}))
    v3 = publish.publish("mini")
    assert v3.version == "2.0.0" and "raw_unit" in v3.message and v3.manifest.table.endswith("__v2")
    # every version still pulls, checksums verified
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        r = pull.pull(f"mini@{v}", "research", tmp_path / f"p{v}", actor="team:ml")
        assert r.rows == publish.read_manifest("mini", v).rows
    # a site outside an input's residency is refused and audited
    ds.write_text(yaml.safe_dump({"name": "mini", "site": "virginia", "inputs": [PUMPS]}))
    with pytest.raises(PolicyRefused, match=r"virginia.*outside"):
        publish.publish("mini")


def test_tampered_audit_and_data_detected(lab: Path, tmp_path: Path, contracts) -> None:
    from pipelines import runner

    _push_batch(contracts, tmp_path, 60, START, ids=(PUMPS,))
    runner.run_pending()
    spec = ROOT / "data_contracts"
    assert spec.exists()
    c = cat.Catalog(settings().catalog_url)
    assert c.verify_audit() == []
    with c.begin() as conn:
        conn.execute(sa.update(cat.audit).where(cat.audit.c.seq == 1).values(actor="someone-else"))
    assert any("edited" in p for p in c.verify_audit())


def test_real_sensor_sets_published_and_pulled(lab: Path, tmp_path: Path, realdata: Path, contracts) -> None:
    from pipelines import runner

    r1 = landing.push(contracts[CMAPSS], [realdata / "cmapss/train_FD001.txt"])
    r2 = landing.push(contracts[HYDRAULIC], [realdata / "hydraulic/TS1.txt", realdata / "hydraulic/VS1.txt"])
    assert r1.accepted and r2.accepted
    runs = runner.run_pending()
    assert all(r.validation_ok for r in runs) and len(runs) == 2
    t = runner.publish("turbofan-cmapss")
    h = runner.publish("hydraulic-rig")
    assert t["rows"] == 20_631 * 24 and h["rows"] == 2 * 2_205 * 60
    m = publish.read_manifest("turbofan-cmapss", "1.0.0")
    cur = m.curation[r1.delivery_id]
    assert sorted(cur["constant_sensors"]) == sorted(["setting3", "s1", "s5", "s10", "s16", "s18", "s19"])
    res = pull.pull("hydraulic-rig@1.0.0", "benchmarking", tmp_path / "h", actor="team:bench")
    assert res.rows == 264_600
    with pytest.raises(DatalabError):
        pull.pull("hydraulic-rig@9.9.9", "benchmarking", tmp_path / "h", actor="team:bench")


def test_publish_in_bounded_files_is_one_version(lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    """A version written as many small files (table_stream.COMMIT_ROWS) is one commit with every row once."""
    import polars as pl

    from datalab.store import table_stream
    from pipelines import runner

    monkeypatch.setattr(table_stream, "COMMIT_ROWS", 700)  # a few thousand rows -> several files
    # A dropped column: the curated files are not the version's files, so they are rewritten in slices.
    _dataset(tmp_path, monkeypatch, "chunked", "kajaani", [PUMPS], drop_columns=["raw_unit"])
    _push_batch(contracts, tmp_path, 70, START, rows=2_000, ids=(PUMPS,))
    assert all(r.validation_ok for r in runner.run_pending())
    s = settings()
    ice = publish.iceberg_catalog(s)

    def check(version: str) -> pl.DataFrame:
        m = publish.read_manifest("chunked", version, s)
        curated = pl.concat([pl.read_parquet(s.home / state.get(d, s)["curated_path"]) for d in m.lineage.deliveries])
        tbl = ice.load_table(m.table)
        got = pl.from_arrow(tbl.scan(snapshot_id=m.snapshot_id).to_arrow())
        assert got.height == curated.height == m.rows > 3 * 700
        # every row once: the same multiset of (delivery, entity, sensor, time)
        key = ["delivery_id", "entity", "sensor", "time"]
        assert got.select(key).sort(key).equals(curated.select(key).sort(key))
        assert "raw_unit" not in got.columns and got["tenant"].unique().to_list() == [contracts[PUMPS].tenant]
        assert len(m.files) > 1  # several files ...
        return got

    v1 = publish.publish("chunked")
    assert v1.version == "1.0.0"
    check("1.0.0")
    tbl = ice.load_table(v1.manifest.table)
    # ... in one transaction: the tag points at the last snapshot, and no version names the others
    assert tbl.metadata.refs["v1.0.0"].snapshot_id == v1.manifest.snapshot_id == tbl.current_snapshot().snapshot_id
    _push_batch(contracts, tmp_path, 71, START + dt.timedelta(days=3), rows=2_000, ids=(PUMPS,))
    assert all(r.validation_ok for r in runner.run_pending())
    v2 = publish.publish("chunked")
    assert v2.version == "1.0.1" and v2.manifest.version_reason.startswith("patch")
    check("1.0.1")
    check("1.0.0")  # the older version reads as before


def test_curated_file_is_published_as_it_is(lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    """A single-contract version's data files are its curated files, byte for byte, carrying their provenance."""
    import polars as pl

    from datalab.timeseries.curate import PROVENANCE
    from pipelines import runner

    _dataset(tmp_path, monkeypatch, "whole", "kajaani", [PUMPS])
    recs = _push_batch(contracts, tmp_path, 90, START, rows=1_500, ids=(PUMPS,))
    recs += _push_batch(contracts, tmp_path, 91, START + dt.timedelta(days=2), rows=1_500, ids=(PUMPS,))
    assert all(r.validation_ok for r in runner.run_pending())
    s = settings()
    curated = {d.delivery_id: s.home / state.get(d.delivery_id, s)["curated_path"] for d in recs}
    for d, path in curated.items():
        prov = pl.read_parquet(path, columns=list(PROVENANCE)).unique()
        assert prov.rows() == [(contracts[PUMPS].tenant, PUMPS, contracts[PUMPS].version)], d
    v = publish.publish("whole")
    files = [s.home / f.path for f in v.manifest.files]
    # one file per delivery, in delivery order, each the curated file's bytes (a copy, not a link)
    assert [_sha(p) for p in files] == [_sha(curated[d]) for d in sorted(curated)]
    assert all(p.stat().st_ino != c.stat().st_ino for p, c in zip(files, (curated[d] for d in sorted(curated)), strict=True))
    tbl = publish.iceberg_catalog(s).load_table(v.manifest.table)
    got = pl.from_arrow(tbl.scan(snapshot_id=v.manifest.snapshot_id).to_arrow())
    want = pl.concat([pl.read_parquet(curated[d]) for d in sorted(curated)])
    assert got.equals(want.select(got.columns)) and got.height == v.manifest.rows
    # the typed manifest is the JSON on disk, key for key and in the same order, both ways
    on_disk = json.loads((s.versions / "whole" / v.version / "manifest.json").read_text())
    assert list(v.manifest.to_dict().items()) == list(on_disk.items())
    read = publish.read_manifest("whole", v.version)
    assert read.status == "active" and list(read.to_dict()) == [*on_disk, "status"]
    assert read.replace(status=None) == v.manifest


def test_failed_publish_leaves_no_data_files(lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    """Files written for a version whose commit fails are removed; the retry publishes every row once."""
    import polars as pl
    from pyiceberg.table import Transaction

    from pipelines import runner

    _dataset(tmp_path, monkeypatch, "flaky", "kajaani", [PUMPS])
    _push_batch(contracts, tmp_path, 80, START, rows=1_500, ids=(PUMPS,))
    assert all(r.validation_ok for r in runner.run_pending())
    s = settings()

    def broken(self, *a, **k):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as m:
        m.setattr(Transaction, "add_files", broken)
        with pytest.raises(OSError, match="simulated"):
            publish.publish("flaky")
    assert not list(s.warehouse.rglob("*.parquet")), "uncommitted data files left behind"
    assert publish.list_versions("flaky", s) == []
    v = publish.publish("flaky")
    assert v.version == "1.0.0"
    got = pl.read_parquet([s.home / f.path for f in v.manifest.files])
    assert got.height == v.manifest.rows > 0
