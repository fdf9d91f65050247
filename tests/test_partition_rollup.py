"""The roll-up of delivery partitions (pipelines/rollup.py, datalab.store.state.settled / plan_rollup).

Against a real Dagster instance: settled deliveries' partitions go after
DATALAB_PARTITION_KEEP_DAYS, unsettled ones stay, DATALAB_MAX_PARTITIONS is
never passed (by the roll-up or by the sensor), every removal is audited, a
second roll-up removes nothing, and a rolled-up delivery is still in its
version's lineage, in the receipts and in Dagster's event log.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from datalab.config import settings
from datalab.store import catalog as cat
from datalab.store import state
from tests.conftest import PUMPS, SPINDLE, covered

NOW = dt.datetime.now(dt.UTC)


def _iso(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).isoformat(timespec="microseconds")


def _id(i: int, days_ago: float = 50) -> str:
    """A delivery id as the landing zone makes them: receipt time first, so id order is arrival order."""
    return f"d-{(NOW - dt.timedelta(days=days_ago)):%Y%m%d%H%M%S}-{i:08x}"


def _deliver(ids: list[str], contract_id: str = SPINDLE, status: str = "accepted", days_ago: float = 50) -> None:
    with cat.Catalog(settings().catalog_url).begin() as conn:
        conn.execute(cat.deliveries.insert(), [
            {"id": d, "tenant": "bavaria-spindle", "contract_id": contract_id, "contract_version": "1.0.0",
             "status": status, "reasons": "[]", "bytes": 1, "rows": 1, "idem_key": d,
             "received_at": _iso(days_ago), "pushed_by": "firm:test"} for d in ids])


def _stage(ids: list[str], stage: str, ok: bool | None, days_ago: float) -> None:
    with cat.Catalog(settings().catalog_url).begin() as conn:
        for d in ids:
            conn.execute(cat.processing.delete().where(cat.processing.c.delivery_id == d))
            conn.execute(cat.processing.insert().values(delivery_id=d, stage=stage, validation_ok=ok, stats="{}",
                                                         updated_at=_iso(days_ago)))


_VERSIONS = [0]


def _publish(ids: list[str], days_ago: float, dataset: str = "spindle-only") -> str:
    """A version row and a manifest whose lineage holds ``ids`` (what publish writes, for the roll-up's reading)."""
    _VERSIONS[0] += 1
    version = f"1.0.{_VERSIONS[0]}"
    s = settings()
    vdir = s.versions / dataset / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "manifest.json").write_text(json.dumps({"dataset": dataset, "version": version,
                                                    "lineage": {"contracts": [], "deliveries": sorted(ids)}}))
    with cat.Catalog(s.catalog_url).begin() as conn:
        conn.execute(cat.dataset_versions.insert().values(
            dataset=dataset, version=version, table_ident=f"lab.{dataset}", snapshot_id=1, content_key=version,
            manifest_path=str((vdir / "manifest.json").relative_to(s.home)), status="active", created_at=_iso(days_ago)))
    return f"{dataset}@{version}"


def _rollup_entries() -> list[cat.AuditEntry]:
    return cat.Catalog(settings().catalog_url).audit_entries(action="rollup")


@pytest.fixture
def kinds_of_delivery(lab: Path) -> dict[str, list[str]]:
    """Deliveries of the spindle contract in every state, received 50 days ago."""
    ids = iter(range(1000))
    k: dict[str, list[str]] = {name: [_id(next(ids)) for _ in range(2)] for name in (
        "pending", "curated", "retryable", "validated_unpublished", "published_old", "published_recent",
        "rejected_old", "rejected_recent", "expired", "withdrawn")}
    for name, ds in k.items():
        _deliver(ds, status=name if name in ("expired", "withdrawn") else "accepted")
    _deliver([_id(999)], status="rejected")  # refused at the landing zone: never had a partition
    _stage(k["curated"], "curated", None, 49)
    _stage(k["retryable"], "failed", None, 45)  # the run failed before its suite: a re-run may fix it
    _stage(k["validated_unpublished"], "validated", True, 45)
    _stage(k["published_old"] + k["published_recent"], "validated", True, 45)
    _stage(k["rejected_old"], "failed", False, 40)
    _stage(k["rejected_recent"], "failed", False, 2)
    _stage(k["expired"] + k["withdrawn"], "deleted", None, 35)
    k["v_old"] = [_publish(k["published_old"], 40)]
    k["v_recent"] = [_publish(k["published_old"] + k["published_recent"], 1)]  # cumulative, as publish does
    return k


def test_settled_is_decided_in_the_core(kinds_of_delivery: dict[str, list[str]]) -> None:
    k = kinds_of_delivery
    got = {x.delivery_id: x for x in state.settled(SPINDLE)}
    settled_kinds = ("published_old", "published_recent", "rejected_old", "rejected_recent", "expired", "withdrawn")
    assert set(got) == {d for n in settled_kinds for d in k[n]}
    for d in k["published_old"]:  # the first version that holds it, not a later cumulative one
        assert got[d].why == "published" and got[d].version == k["v_old"][0] and got[d].at == _iso(40)
    for d in k["published_recent"]:
        assert got[d].version == k["v_recent"][0]
    assert {got[d].why for d in k["rejected_old"]} == {"rejected at validation"}
    assert {got[d].why for d in k["expired"]} == {"expired"} and {got[d].why for d in k["withdrawn"]} == {"withdrawn"}
    # earliest settled first; ``among`` narrows to the live partitions
    ats = [x.at for x in state.settled(SPINDLE)]
    assert ats == sorted(ats, key=dt.datetime.fromisoformat)
    assert [x.delivery_id for x in state.settled(SPINDLE, among=k["rejected_old"][:1])] == k["rejected_old"][:1]
    assert state.settled(PUMPS) == []
    from datalab.policy import retention

    assert state.PURGED == retention.PURGED  # the statuses retention sets are the ones read here


def test_plan_is_a_pure_function() -> None:
    s = [state.Settled(f"d{i}", "published", _iso(100 - i)) for i in range(100)]  # d0 settled earliest
    live = [f"d{i}" for i in range(100)] + [f"p{i}" for i in range(20)]  # 20 unsettled
    p = state.plan_rollup(live, s, NOW, keep_days=30, max_partitions=1000)
    assert [d.delivery_id for d, _ in p.remove] == [f"d{i}" for i in range(70)]  # settled 31..100 days ago
    assert {r for _, r in p.remove} == {"age"} and p.live_after == 50 and p.settled_kept == 30
    # the bound: the earliest settled next, down to a tenth under the bound; never an unsettled one
    p = state.plan_rollup(live, s, NOW, keep_days=1000, max_partitions=50)
    assert [d.delivery_id for d, _ in p.remove] == [f"d{i}" for i in range(75)] and p.live_after == 45
    assert {r for _, r in p.remove} == {"bound"} and p.room == 5
    p = state.plan_rollup(live, s, NOW, keep_days=1000, max_partitions=50, need=25, busy={"d0"}, limit=10)
    assert [d.delivery_id for d, _ in p.remove] == [f"d{i}" for i in range(1, 11)]  # d0 has a run queued
    p = state.plan_rollup(live[100:], s, NOW, keep_days=0, max_partitions=10)
    assert p.remove == () and p.live_after == 20 and p.room == 0  # only unsettled: nothing to remove


def test_rollup_removes_old_settled_partitions_only_and_audits_them(kinds_of_delivery: dict[str, list[str]], contracts) -> None:
    from pipelines import rollup

    k = kinds_of_delivery
    c = contracts[SPINDLE]
    name = rollup.partitions_name(c)
    every = [d for n, ds in k.items() if not n.startswith("v_") for d in ds]
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions(name, every)
        dry = rollup.rollup_contract(inst, c, settings(), "test", dry_run=True)
        assert len(inst.get_dynamic_partitions(name)) == len(every) and _rollup_entries() == []
        rep = rollup.rollup_contract(inst, c, settings(), "test")
        gone = set(k["published_old"] + k["rejected_old"] + k["expired"] + k["withdrawn"])  # settled > 30 days ago
        assert {r["id"] for r in rep.removed} == {r["id"] for r in dry.removed} == gone
        assert set(inst.get_dynamic_partitions(name)) == set(every) - gone
        assert rep.live_before == len(every) and rep.live_after == len(every) - len(gone)
        assert rep.counts() == {"published": 2, "rejected at validation": 2, "expired": 2, "withdrawn": 2}
        (entry,) = _rollup_entries()
        assert entry.subject == SPINDLE and entry.actor == "test" and entry.decision == "removed"
        assert {x["id"] for x in entry.detail["deliveries"]} == gone and entry.detail["partitions"] == name
        assert {x["version"] for x in entry.detail["deliveries"] if x["settled"] == "published"} == set(k["v_old"])
        # a second roll-up finds nothing more to remove and writes nothing
        again = rollup.rollup_contract(inst, c, settings(), "test")
        assert again.removed == [] and len(_rollup_entries()) == 1
    assert cat.Catalog(settings().catalog_url).verify_audit() == []
    # the catalog still knows every delivery and its stage
    assert state.get(k["published_old"][0])["stage"] == "validated"


def test_rollup_keeps_the_bound_earliest_settled_first(lab: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    """120 live partitions (e.g. added by ``datalab run``), a bound of 50: the daily roll-up gets under it."""
    from pipelines import rollup

    monkeypatch.setenv("DATALAB_MAX_PARTITIONS", "50")
    c = contracts[SPINDLE]
    ids = [_id(i) for i in range(120)]
    _deliver(ids)
    _stage(ids[:100], "validated", True, 10)
    for i in range(0, 100, 10):  # published over ten days, all within the 30-day keep window
        _publish(ids[:i + 10], days_ago=10 - i / 10)
    with dg.DagsterInstance.ephemeral() as inst:
        inst.add_dynamic_partitions(rollup.partitions_name(c), ids)
        rep = rollup.rollup_contract(inst, c, settings(), "test")
        live = inst.get_dynamic_partitions(rollup.partitions_name(c))
    assert len(live) == 45 <= 50  # a tenth under the bound, so the sensor does not roll up at every tick
    assert [r["id"] for r in rep.removed] == ids[:75] and {r["rule"] for r in rep.removed} == {"bound"}
    assert set(ids[100:]) <= set(live)  # the 20 unsettled stay


def test_sensor_never_passes_the_bound(lab: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    """120 deliveries, a bound of 50: the sensor adds up to the bound, says why it waits, rolls up once some settle."""
    from pipelines.definitions import build_definitions
    from pipelines.rollup import partitions_name

    monkeypatch.setenv("DATALAB_MAX_PARTITIONS", "50")
    c = contracts[SPINDLE]
    ids = [_id(i) for i in range(120)]
    _deliver(ids)
    defs = build_definitions()
    sensor = defs.resolve_sensor_def(f"deliveries__{c.slug}")
    requested: list[str] = []
    removed: set[str] = set()
    skips: list[str] = []
    cursor = None

    def tick(inst: dg.DagsterInstance) -> dg.SensorResult:
        nonlocal cursor
        before = set(inst.get_dynamic_partitions(partitions_name(c)))
        res = sensor(dg.build_sensor_context(instance=inst, cursor=cursor, definitions=defs))
        removed.update(before - set(inst.get_dynamic_partitions(partitions_name(c))))
        for req in res.dynamic_partitions_requests or []:  # what the daemon does with the result
            inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        live = inst.get_dynamic_partitions(partitions_name(c))
        assert len(live) <= 50, f"{len(live)} live partitions"
        requested.extend(d for r in res.run_requests or [] for d in covered(r, list(live)))
        if res.skip_reason:
            skips.append(res.skip_reason.skip_message)
        cursor = res.cursor
        return res

    with dg.DagsterInstance.ephemeral() as inst:
        for _ in range(4):
            tick(inst)
        assert requested == ids[:50] and len(skips) == 2
        assert "DATALAB_MAX_PARTITIONS=50" in skips[-1] and "none settled" in skips[-1]
        # the first 40 are published (yesterday: inside the keep window, so only the bound removes them)
        _stage(ids[:40], "validated", True, 2)
        _stage(ids[40:50], "curated", None, 2)
        v = _publish(ids[:40], days_ago=1)
        for _ in range(6):
            tick(inst)
        assert requested == ids[:90]  # 40 more, each once, in order
        assert removed == set(ids[:40])  # the settled ones, never the unsettled
        assert set(inst.get_dynamic_partitions(partitions_name(c))) == set(ids[40:90])
        # the rest waits until more settle
        _stage(ids[40:80], "failed", False, 1)  # rejected at validation
        for _ in range(4):
            tick(inst)
        assert requested == ids and len(set(requested)) == 120
        assert removed == set(ids[:70])  # the bound's share only, earliest settled first
    entries = _rollup_entries()
    assert entries and {e.actor for e in entries} == {f"dagster:sensor:deliveries__{c.slug}"}
    audited = [x for e in entries for x in e.detail["deliveries"]]
    assert {x["id"] for x in audited} == removed and len(audited) == len(removed)
    assert {x["version"] for x in audited if x["settled"] == "published"} == {v}


@pytest.mark.slow
def test_rolled_up_delivery_keeps_its_lineage_status_and_history(lab: Path, tmp_path: Path, contracts,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real pipeline: push, run, publish, roll up (CLI); the delivery is still everywhere it was."""
    import shutil

    import yaml

    from assets.common import key_prefix
    from datalab.cli.commands import app
    from datalab.intake import landing
    from datalab.timeseries import sample
    from pipelines import rollup, runner
    from tests.conftest import ROOT

    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    (spec / "datasets" / "pumps-only.yaml").write_text(yaml.safe_dump({"name": "pumps-only", "site": "kajaani", "inputs": [PUMPS]}))
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    monkeypatch.setenv("DATALAB_PARTITION_KEEP_DAYS", "0")
    c = contracts[PUMPS]
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    recs = [landing.push(c, [sample.write(sample.generate(c, 500, seed=i, start=start + dt.timedelta(hours=i)),
                                           tmp_path / f"p{i}.csv")], actor="firm:oulu-pumps") for i in range(2)]
    assert all(r.accepted for r in recs)
    ids = sorted(r.delivery_id for r in recs)
    assert all(r.validation_ok for r in runner.run_pending())
    inst = runner.instance()
    name = rollup.partitions_name(c)
    assert set(inst.get_dynamic_partitions(name)) == set(ids)
    # validated, not yet published: not settled, the roll-up keeps them
    cli = CliRunner()
    r = cli.invoke(app, ["partitions", "rollup"])
    assert r.exit_code == 0, r.output
    assert f"{PUMPS}: removed 0 partition(s)" in r.output and set(inst.get_dynamic_partitions(name)) == set(ids)
    assert runner.publish("pumps-only")["version"] == "1.0.0"
    r = cli.invoke(app, ["partitions", "rollup", "--dry-run"])
    assert "would remove 2 partition(s) (2 published)" in r.output and set(inst.get_dynamic_partitions(name)) == set(ids)
    r = cli.invoke(app, ["partitions", "rollup"])
    assert r.exit_code == 0 and "removed 2 partition(s) (2 published)" in r.output, r.output
    assert all(d in r.output and "pumps-only@1.0.0" in r.output for d in ids)
    assert inst.get_dynamic_partitions(name) == []
    # a second roll-up removes nothing more
    r = cli.invoke(app, ["partitions", "rollup", "--json"])
    assert [x["removed"] for x in json.loads(r.output) if x["contract"] == PUMPS] == [0]
    assert len(_rollup_entries()) == 1
    # still in the version's lineage, the receipts and the processing state
    r = cli.invoke(app, ["show", "pumps-only@1.0.0", "--json"])
    assert set(json.loads(r.output)["lineage"]["deliveries"]) == set(ids)
    r = cli.invoke(app, ["receipts", "--json"])
    assert {x["delivery_id"] for x in json.loads(r.output)} >= set(ids)
    assert {state.get(d)["stage"] for d in ids} == {"validated"}
    # and its runs' materialisations stay in Dagster's event log
    key = dg.AssetKey([*key_prefix(c), "curated"])
    for d in ids:
        recs_ = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[d]), limit=5).records
        assert recs_, f"no materialisation of {d} left"
    # a re-publish with nothing new is still no new version
    assert not runner.publish("pumps-only")["new_version"]


@pytest.mark.slow
def test_datalab_run_keeps_the_bound_too(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``datalab run`` (runner.run_pending) adds partitions within the bound, rolling up settled ones first."""
    import shutil

    import yaml

    from datalab.intake import landing
    from datalab.timeseries import sample
    from pipelines import rollup, runner
    from tests.conftest import ROOT

    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    (spec / "datasets" / "pumps-only.yaml").write_text(yaml.safe_dump({"name": "pumps-only", "site": "kajaani", "inputs": [PUMPS]}))
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    monkeypatch.setenv("DATALAB_PARTITION_KEEP_DAYS", "0")
    monkeypatch.setenv("DATALAB_MAX_PARTITIONS", "2")
    c = contracts[PUMPS]
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    ids = [landing.push(c, [sample.write(sample.generate(c, 300, seed=i, start=start + dt.timedelta(hours=i)),
                                          tmp_path / f"p{i}.csv")], actor="firm:oulu-pumps").delivery_id for i in range(3)]
    first = runner.run_pending(c.id)
    assert [r.delivery_id for r in first] == ids[:2] and all(r.validation_ok for r in first)  # oldest first
    assert "1 pending deliveries wait" in capsys.readouterr().err
    name = rollup.partitions_name(c)
    inst = runner.instance()
    assert sorted(inst.get_dynamic_partitions(name)) == sorted(ids[:2])
    assert runner.publish("pumps-only")["version"] == "1.0.0"  # the two settle
    second = runner.run_pending(c.id)
    assert [r.delivery_id for r in second] == ids[2:] and second[0].validation_ok
    assert len(inst.get_dynamic_partitions(name)) <= 2 and ids[2] in inst.get_dynamic_partitions(name)
    assert any(e.actor == "datalab:run" for e in _rollup_entries())
