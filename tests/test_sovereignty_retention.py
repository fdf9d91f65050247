"""Retention and withdrawal end to end, through the real Dagster instance.

After enforcement no file under ``$DATALAB_HOME`` holds the expired rows
(every file's bytes are scanned for the rows' entity ids), the withdrawn
version cannot be pulled, other versions still pull bit for bit, and the
next version leaves the expired contract out with the reason recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from datalab.config import settings
from datalab.errors import PolicyRefused
from datalab.intake import landing
from datalab.store import catalog as cat
from datalab.store import publish, pull
from datalab.timeseries import sample
from tests.conftest import PRESS, PUMPS, ROOT, fresh_pg_database

START = dt.datetime(2026, 2, 2, tzinfo=dt.UTC)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files_holding(home: Path, markers: list[bytes]) -> dict[str, list[str]]:
    """Every file under ``home`` whose bytes contain one of ``markers``."""
    hits: dict[str, list[str]] = {}
    for p in home.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            found = [m.decode() for m in markers if m in data]
            if found:
                hits[str(p.relative_to(home))] = found
    return hits


def _set_policy(path: Path, **changes: object) -> None:
    doc = yaml.safe_load(path.read_text())
    for cp in doc["customProperties"]:
        if cp["property"] == "sovereignty":
            cp["value"].update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_retention_and_withdrawal_delete_for_real(lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:

    import dagster as dg

    from pipelines import runner
    from pipelines.definitions import build_definitions

    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    (spec / "datasets" / "mix.yaml").write_text(yaml.safe_dump({"name": "mix", "site": "munich", "inputs": [PUMPS, PRESS]}))
    (spec / "datasets" / "solo.yaml").write_text(yaml.safe_dump({"name": "solo", "site": "munich", "inputs": [PRESS]}))
    recs = {}
    for i, cid in enumerate((PUMPS, PRESS)):
        c = contracts[cid]
        f = sample.write(sample.generate(c, 1_500, seed=70 + i, start=START), tmp_path / f"{c.product}.csv")
        recs[cid] = landing.push(c, [f], actor=f"firm:{c.tenant}")
    assert all(r.accepted for r in recs.values())
    assert all(r.validation_ok for r in runner.run_pending())
    assert runner.publish("mix")["version"] == "1.0.0"
    assert runner.publish("solo")["version"] == "1.0.0"
    card_md = runner.instance().get_latest_materialization_event(dg.AssetKey(["datasets", "mix"])).asset_materialization.metadata["card"]
    assert card_md.value.startswith("# ") and "## Provenance" in card_md.value  # the datasheet is shown in Dagster
    s = settings()
    pumps_ids = sorted(pl.concat([pl.read_parquet(s.home / f.path) for f in publish.read_manifest("mix", "1.0.0").files])
                       .filter(pl.col("contract_id") == PUMPS)["entity"].unique().to_list())
    markers = [x.encode() for x in pumps_ids]
    assert markers and all(x.startswith("OP-") for x in pumps_ids)
    before = _files_holding(s.home, markers)
    # the markers are really there before (landing, raw, curated, Iceberg, Dagster, card)
    assert any(k.startswith("landing/") for k in before) and any(k.startswith("warehouse/") for k in before)
    assert any(k.startswith("dagster/") for k in before) and any(k.startswith("versions/mix/") for k in before)
    solo_before = pull.pull("solo@1.0.0", "research", tmp_path / "solo-a", actor="team:ml")
    solo_hashes = [_sha(p) for p in solo_before.files]

    # the pumps contract's retention date passes; the Dagster job enforces it
    _set_policy(spec / "providers" / "oulu-pumps" / "pump-telemetry.yaml", retention_until="2026-01-31")
    defs = build_definitions()
    assert defs.resolve_schedule_def("retention_daily").cron_schedule == "15 2 * * *"
    job = defs.resolve_job_def("retention_enforce")
    res = job.execute_in_process(instance=runner.instance(), raise_on_error=True)
    assert res.success
    assert res.output_for_node("retention_enforce_op") == 1

    left = _files_holding(s.home, markers)
    assert left == {}, f"expired rows still on disk in {left}"
    with pytest.raises(PolicyRefused, match=r"withdrawn.*retention_until 2026-01-31"):
        pull.pull("mix@1.0.0", "research", tmp_path / "mix-a", actor="team:ml")
    again = pull.pull("solo@1.0.0", "research", tmp_path / "solo-b", actor="team:ml")
    assert [_sha(p) for p in again.files] == solo_hashes
    # the next version leaves the expired contract out, with the reason recorded
    v2 = publish.publish("mix")
    assert v2.created and v2.version == "1.0.1"
    assert v2.manifest.sovereignty["exclusions"][0]["contract"] == PUMPS
    assert "retention_until" in v2.manifest.sovereignty["exclusions"][0]["reason"]
    assert set(pl.read_parquet([s.home / f.path for f in v2.manifest.files])["contract_id"].unique()) == {PRESS}
    log = cat.Catalog(s.catalog_url)
    deleted = [e for e in log.audit_entries(action="delete") if e.decision == "expired"]
    assert [e.subject for e in deleted] == [recs[PUMPS].delivery_id]
    files = deleted[0].detail["files"]
    assert all(len(f["sha256"]) == 64 for f in files)
    # the audit keeps the hashes of what was deleted: the landed file's hash is the receipt's
    assert recs[PUMPS].files[0].sha256 in {f["sha256"] for f in files}
    assert {f["path"].split("/")[0] for f in files} >= {"landing", "raw", "curated"}
    assert any(e.subject == "mix@1.0.0" and e.decision == "withdrawn" for e in log.audit_entries(action="withdraw"))
    assert any(e.subject == "mix@1.0.0" and e.decision == "refused" for e in log.audit_entries(action="pull"))
    # a second run finds nothing left to do
    assert job.execute_in_process(instance=runner.instance()).output_for_node("retention_enforce_op") == 0

    # the press firm withdraws its contract: same effect from that moment
    from datalab.cli.commands import app

    press_ids = [x.encode() for x in pl.read_parquet(again.files)["entity"].unique().to_list()]
    out = CliRunner().invoke(app, ["contract", "withdraw", PRESS, "--reason", "end of cooperation"])
    assert out.exit_code == 0, out.output
    assert "solo@1.0.0" in out.output and "mix@1.0.1" in out.output
    assert _files_holding(s.home, press_ids) == {}
    with pytest.raises(PolicyRefused, match=r"withdrawn.*end of cooperation"):
        pull.pull("solo@1.0.0", "research", tmp_path / "solo-c", actor="team:ml")
    with pytest.raises(PolicyRefused, match=r"every input is excluded"):
        publish.publish("solo")
    # from that moment the firm's pushes are refused, and the next enforcement clears the quarantine too
    c = contracts[PRESS]
    late = landing.push(c, [sample.write(sample.generate(c, 200, seed=99, start=START), tmp_path / "late.csv")], actor="firm:lyon-presses")
    assert not late.accepted and any("withdrawn" in r and "rule: withdrawn" in r for r in late.reasons)
    out = CliRunner().invoke(app, ["retention", "enforce"])
    assert out.exit_code == 0 and f"{PRESS}: withdrawn; 1 deliveries" in out.output, out.output
    assert _files_holding(s.home, press_ids) == {}
    assert log.verify_audit() == []


def test_purge_on_postgresql_catalog(lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    """The same purge with the catalog (and Iceberg SQL catalog) on PostgreSQL, core only."""
    with fresh_pg_database("datalab_sov") as url:
        _purge_on(url, tmp_path, contracts, monkeypatch)


def _purge_on(url: str, tmp_path: Path, contracts, monkeypatch) -> None:
    import sqlalchemy as sa

    from datalab.policy import retention
    from datalab.quality import validate
    from datalab.store import state
    from datalab.timeseries import curate, ingest

    monkeypatch.setenv("DATALAB_CATALOG_URL", url)
    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    (spec / "datasets" / "pg.yaml").write_text(yaml.safe_dump({"name": "pg", "site": "munich", "inputs": [PUMPS]}))
    s = settings()
    c = contracts[PUMPS]
    rec = landing.push(c, [sample.write(sample.generate(c, 800, seed=5, start=START), tmp_path / "p.csv")])
    ingest.ingest_raw(c, rec.delivery_id)
    curate.curate_delivery(c, rec.delivery_id)
    rep = validate.validate(c, curate.curated_path(c, rec.delivery_id, s), run_name=rec.delivery_id, build_docs=False)
    state.set_stage(rec.delivery_id, "validated", s=s, validation_ok=rep.success, validation=rep.to_dict())
    assert publish.publish("pg").version == "1.0.0"
    markers = [x.encode() for x in pl.read_parquet(curate.curated_path(c, rec.delivery_id, s))["entity"].unique().to_list()]
    assert _files_holding(s.home, markers)
    r = retention.withdraw_contract(PUMPS, "firm:oulu-pumps", "test on PostgreSQL", s)
    assert r.versions_withdrawn == ["pg@1.0.0"] and r.iceberg
    assert _files_holding(s.home, markers) == {}
    with cat.Catalog(url).begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cat.watermarks)).scalar() == 0
    with pytest.raises(PolicyRefused, match=r"withdrawn.*test on PostgreSQL"):
        pull.pull("pg@1.0.0", "research", tmp_path / "x", actor="team:ml")
