"""The cluster profile against the real services: PostgreSQL, RabbitMQ, Celery workers, an S3 server.

Skips with its reason where PostgreSQL (``DATALAB_TEST_PG_URL``, set by
scripts/test.sh when 127.0.0.1:5432 answers) or RabbitMQ (127.0.0.1:5672, or
``DATALAB_TEST_BROKER_URL``) is missing. Each test gets its own database and
its own Celery queue (deleted afterwards), so concurrent runs on a shared
broker do not steal each other's tasks, and its own S3 server (moto, on
loopback; the cluster extra), so the lab's files are on object storage as at
a site.

The worker-kill tests run by default: a run gets a fixed time (150 s; it
takes about 10) and runs on a daemon thread, and the executor bounds its own
waits (pipelines/celery_watch.py), so a step that no worker will run fails
the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datalab.intake import landing
from datalab.store import state
from datalab.timeseries import sample
from tests.conftest import PRESS, PUMPS, ROOT, SPINDLE, fresh_pg_database, s3_server

pytestmark = pytest.mark.slow
BROKER = os.environ.get("DATALAB_TEST_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def _broker_answers() -> bool:
    s = socket.socket()
    s.settimeout(1)
    try:
        host_port = BROKER.split("@", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        return s.connect_ex((host or "127.0.0.1", int(port or 5672))) == 0
    finally:
        s.close()


@pytest.fixture
def cluster_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    pytest.importorskip("dagster_celery", reason="the cluster extra (dagster-celery) is not installed")
    pytest.importorskip("dagster_postgres", reason="the cluster extra (dagster-postgres) is not installed")
    if not _broker_answers():
        pytest.skip(f"no RabbitMQ broker at {BROKER} (set DATALAB_TEST_BROKER_URL)")
    with fresh_pg_database("dl_cluster") as url, s3_server() as aws:
        env = {
            **aws,  # the lab's files on object storage: moto's S3 server on loopback
            "DATALAB_STORAGE": "s3://lab-bucket/cluster",
            "DATALAB_SCRATCH": str(tmp_path / "scratch"),
            "DATALAB_HOME": str(tmp_path / "lab"),
            "DATALAB_CONTRACTS": str(ROOT / "data_contracts"),
            "DATALAB_ENGINE": "cpu",
            "DATALAB_PROFILE": "cluster",
            "DATALAB_CATALOG_URL": url,
            "DATALAB_BROKER_URL": BROKER,
            "DATALAB_CELERY_QUEUE": f"dl-test-{secrets.token_hex(4)}",
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("DATALAB_SITE", raising=False)
        procs: list[subprocess.Popen] = []
        nodes: dict[str, subprocess.Popen] = {}  # Celery node name prefix -> its process

        def start_worker(name: str, celery_overrides: dict | None = None) -> subprocess.Popen:
            """``datalab worker --name NAME`` in its own session (SIGKILL reaches the Celery parent and its pool child).

            ``celery_overrides``: Celery settings that replace the product's
            for this worker only (a worker that acknowledges early, whose
            killed step the broker cannot hand on).
            """
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
            if celery_overrides is None:
                penv = {**os.environ, "PYTHONPATH": str(ROOT)}
                p = subprocess.Popen([sys.executable, "-m", "pipelines.cluster", "worker", "--name", name],
                                     cwd=ROOT, env=penv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                nodes[f"{name}-{p.pid}@"] = p
            else:
                from datalab.config import settings
                from pipelines.cluster import celery_config_dir, worker_command

                s = settings()
                cmd, penv = worker_command(s, name)
                conf = tmp_path / f"celery-{name}"
                conf.mkdir()
                text = (celery_config_dir(s) / "dagster_celery_config.py").read_text()
                (conf / "dagster_celery_config.py").write_text(
                    text + "".join(f"{k} = {v!r}\n" for k, v in celery_overrides.items()))
                penv["PYTHONPATH"] = os.pathsep.join([str(conf), penv["PYTHONPATH"]])
                node = f"{name}-{secrets.token_hex(3)}@"
                cmd[cmd.index("-n") + 1] = node + socket.gethostname()
                p = subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
                nodes[node] = p
            procs.append(p)
            return p

        try:
            yield {"url": url, "start_worker": start_worker, "tmp": tmp_path, "procs": procs, "nodes": nodes}
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            _delete_queue(env["DATALAB_CELERY_QUEUE"])


def _delete_queue(name: str) -> None:
    """The test's queue (and its exchange) off the broker: each test makes its own, none should pile up."""
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(BROKER, connect_timeout=3) as conn:
        ch = conn.channel()
        ch.queue_delete(name)
        ch.exchange_delete(name)


def _push(contracts, tmp: Path, cid: str, seed: int, rows: int) -> str:
    c = contracts[cid]
    p = sample.write(sample.generate(c, rows, seed=seed, start=START + dt.timedelta(hours=seed)), tmp / f"{c.product}-{seed}.csv")
    r = landing.push(c, [p], actor=f"firm:{c.tenant}")
    assert r.accepted, r
    return r.delivery_id


def _wait_workers(lab: dict, n: int, timeout: float = 60) -> list[str]:
    from celery import Celery

    app = Celery(broker=BROKER)
    deadline = time.time() + timeout
    names: list[str] = []
    while time.time() < deadline:
        names = sorted((app.control.inspect(timeout=1).ping() or {}).keys())
        mine = [x for x in names if any(x.startswith(node) for node in lab["nodes"])]
        if len(mine) >= n:
            return mine
        time.sleep(1)
    raise AssertionError(f"workers did not come up: {names}")


def _step_hosts(inst) -> set[str]:
    """The Celery workers that executed steps, from the engine events in PostgreSQL."""
    import dagster as dg

    hosts = set()
    for rec in inst.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.ENGINE_EVENT), limit=10_000):
        data = rec.event_log_entry.dagster_event.engine_event_data if rec.event_log_entry.dagster_event else None
        for e in (data.metadata or {}).items() if data else []:
            if e[0] == "Celery worker":
                hosts.add(str(e[1].value))
    return hosts


def test_cluster_twenty_deliveries_three_firms_two_workers(cluster_lab: dict, contracts) -> None:
    from pipelines import runner

    cluster_lab["start_worker"]("w1")
    cluster_lab["start_worker"]("w2")
    ids = [SPINDLE] * 7 + [PRESS] * 7 + [PUMPS] * 6
    pushed = [_push(contracts, cluster_lab["tmp"], cid, i, 400) for i, cid in enumerate(ids)]
    _wait_workers(cluster_lab, 2)
    runs = runner.run_pending(parallel=4)
    assert sorted(r.delivery_id for r in runs) == sorted(pushed)
    assert all(r.success and r.validation_ok for r in runs), [r for r in runs if not r.success]
    inst = runner.instance()
    assert type(inst.run_storage).__name__ == "PostgresRunStorage"
    assert len(_step_hosts(inst)) == 2  # both workers took steps
    # every run carries its firm's tag: what the queued coordinator's per-tenant limit counts
    tenants = sorted({r.tags.get("tenant") for r in inst.get_runs()})
    assert tenants == sorted({contracts[c].tenant for c in (SPINDLE, PRESS, PUMPS)})
    md = runner.publish("plant-telemetry")
    assert md["new_version"] and md["version"] == "1.0.0"
    expected = sum(state.get(d)["stats"]["curated"]["rows_out"] for d in pushed)
    assert md["rows"] == expected
    # every data file is in the object store; the local home holds none
    from datalab.config import settings
    from datalab.store.storage import store

    st = store()
    assert not st.is_local
    keys = [o.key for o in st.list()]
    for area, n in (("landing/", 20), ("raw/", 20), ("curated/", 20)):
        assert sum(k.startswith(area) for k in keys) == n, area
    m = __import__("datalab.store.manifests", fromlist=["read_manifest"]).read_manifest("plant-telemetry", "1.0.0")
    assert m.files and all(f.path in keys for f in m.files) and "versions/plant-telemetry/1.0.0/manifest.json" in keys
    home = settings().home
    data = [p for p in home.rglob("*") if p.is_file() and (p.suffix == ".parquet" or p.relative_to(home).parts[0]
                                                             in ("landing", "staging", "raw", "curated", "warehouse", "versions"))]
    assert data == [], f"data files under the local home: {data[:5]}"


CURATED = "bavaria_spindle__spindle_telemetry__curated"  # the curated step of SPINDLE's ingest job
ROWS = 1_000_000  # a curated step of about a second on a worker: long enough to be killed in the middle


def _curated_steps(inst) -> tuple[list[str], int, int]:
    """The curated step so far: the workers that began it (in order), its STEP_STARTs and STEP_SUCCESSes."""
    import dagster as dg

    def records(kind):
        return [r.event_log_entry for r in inst.get_event_records(dg.EventRecordsFilter(event_type=kind), limit=1000)
                if r.event_log_entry.step_key == CURATED]

    began = []
    for e in sorted(records(dg.DagsterEventType.ENGINE_EVENT), key=lambda e: e.timestamp):
        md = e.dagster_event.engine_event_data.metadata or {}
        if "Celery worker" in md:  # written by the worker as it begins the step
            began.append(str(md["Celery worker"].value))
    return began, len(records(dg.DagsterEventType.STEP_START)), len(records(dg.DagsterEventType.STEP_SUCCESS))


def _kill_mid_curation(lab: dict, inst, run: threading.Thread, deadline: float) -> str | None:
    """SIGKILL the worker (Celery parent and pool child) running the curated step, after it started, before it ended."""
    while time.monotonic() < deadline and run.is_alive():
        began, starts, successes = _curated_steps(inst)
        if began and starts and not successes:
            node = began[-1]
            proc = next(p for prefix, p in lab["nodes"].items() if node.startswith(prefix))
            os.killpg(proc.pid, signal.SIGKILL)
            return node
        time.sleep(0.05)
    return None


def _run_in_thread() -> tuple[threading.Thread, dict]:
    """``run_pending`` on a daemon thread: a run that never ended cannot keep the test process alive."""
    from pipelines import runner

    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("runs", runner.run_pending()), daemon=True)
    t.start()
    return t, box


def _published_once(d: str) -> None:
    """The delivery is validated, and in the published version once with all its curated rows."""
    from datalab.store import publish
    from pipelines import runner

    st = state.get(d)
    assert st["stage"] == "validated" and st["validation_ok"], st
    md = runner.publish("plant-telemetry")
    assert md["rows"] == st["stats"]["curated"]["rows_out"] > 0
    m = publish.read_manifest("plant-telemetry", md["version"])
    assert m.lineage.deliveries.count(d) == 1


def test_worker_killed_mid_curation_loses_nothing(cluster_lab: dict, contracts) -> None:
    """SIGKILL the worker in the middle of the curated step: the broker hands the step to the other worker.

    Bounded: the run gets 150 s (it takes about 10); a step the broker did not
    hand on is noticed and submitted again by the executor (the next test).
    """
    from pipelines import runner

    cluster_lab["start_worker"]("w1")
    cluster_lab["start_worker"]("w2")
    _wait_workers(cluster_lab, 2)
    d = _push(contracts, cluster_lab["tmp"], SPINDLE, 1, ROWS)
    inst = runner.instance()
    deadline = time.monotonic() + 150
    t, box = _run_in_thread()
    killed = _kill_mid_curation(cluster_lab, inst, t, deadline)
    t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert killed, "the curated step was never seen running on a worker"
    assert not t.is_alive(), "the run did not finish within 150 s of the worker being killed"
    runs = box["runs"]
    assert len(runs) == 1 and runs[0].success and runs[0].validation_ok, runs
    began, starts, successes = _curated_steps(inst)
    # begun on the killed worker, then again on the other one, which finished it
    assert began[0] == killed and began[-1] != killed and starts >= 2 and successes >= 1, (began, starts, successes)
    _published_once(d)


def test_a_step_the_broker_lost_is_submitted_again(cluster_lab: dict, contracts) -> None:
    """The failure path: a worker that acknowledged its step on receipt is killed mid-curation.

    The broker has nothing to hand on (the message was acknowledged), which
    is what a lost step looks like; before, the run waited for it forever.
    The executor finds the step neither queued nor on any worker and submits
    it again to the worker started after the kill.
    """
    from pipelines import runner

    cluster_lab["start_worker"]("w1", {"task_acks_late": False, "task_reject_on_worker_lost": False})
    _wait_workers(cluster_lab, 1)
    d = _push(contracts, cluster_lab["tmp"], SPINDLE, 2, ROWS)
    inst = runner.instance()
    deadline = time.monotonic() + 150
    t, box = _run_in_thread()
    killed = _kill_mid_curation(cluster_lab, inst, t, deadline)
    assert killed, "the curated step was never seen running on a worker"
    cluster_lab["start_worker"]("w2")
    t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not t.is_alive(), "the run did not finish within 150 s of the worker being killed"
    runs = box["runs"]
    assert len(runs) == 1 and runs[0].success and runs[0].validation_ok, runs
    began, starts, successes = _curated_steps(inst)
    assert began[0] == killed and began[-1] != killed and successes >= 1, (began, starts, successes)
    warnings = [e.user_message for e in inst.all_logs(inst.get_runs(limit=1)[0].run_id)
                if e.level == 30 and e.step_key == CURATED]  # logging.WARNING
    assert any("was lost" in w and "submitted again" in w for w in warnings), warnings
    _published_once(d)


def test_profile_is_read_once_and_shapes_the_instance(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No services needed: what each profile writes into dagster.yaml, and bad settings refused."""
    import yaml

    from datalab.config import settings
    from datalab.errors import DatalabError
    from pipelines.cluster import instance_config, write_instance

    assert settings().profile == "local"
    one_per_contract = {"key": "datalab/contract", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    local = yaml.safe_load((write_instance() / "dagster.yaml").read_text())
    assert local == {"telemetry": {"enabled": False},
                     "event_log_storage": {"module": "pipelines.dagster_storage", "class": "PooledSqliteEventLogStorage",
                                           "config": {"base_dir": str(lab / "dagster" / "history" / "runs")}},
                     "run_queue": {"tag_concurrency_limits": [one_per_contract]}}
    monkeypatch.setenv("DATALAB_PROFILE", "cluster")
    with pytest.raises(DatalabError, match="PostgreSQL"):
        instance_config(settings())
    monkeypatch.setenv("DATALAB_CATALOG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/lab")
    monkeypatch.setenv("DATALAB_TENANT_RUN_LIMIT", "3")
    cfg = instance_config(settings())
    assert cfg["storage"] == {"postgres": {"postgres_url": "postgresql+psycopg2://postgres@127.0.0.1:5432/lab"}}
    rc = cfg["run_coordinator"]
    assert rc["class"] == "QueuedRunCoordinator"
    assert rc["config"]["tag_concurrency_limits"] == [
        {"key": "tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": 3}, one_per_contract]
    monkeypatch.setenv("DATALAB_PROFILE", "kubernetes")
    with pytest.raises(ValueError, match="use local or cluster"):
        settings()
    monkeypatch.setenv("DATALAB_PROFILE", "local")
    monkeypatch.setenv("DATALAB_STORAGE", "/mnt/data")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        settings()


def test_fair_order_interleaves_firms(contracts) -> None:
    from pipelines.runner import fair_order

    todo = [(contracts[SPINDLE], f"s{i}") for i in range(5)] + [(contracts[PRESS], "p0"), (contracts[PUMPS], "u0")]
    assert [d for _, d in fair_order(todo)][:4] == ["s0", "p0", "u0", "s1"]


def test_a_cluster_run_is_not_driven_by_definitions_built_for_other_settings(lab: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No services needed: what made this file's kill test hang in CI, refused instead of waited on.

    The job a cluster run executes is ``pipelines.definitions:defs``, built
    when the process first imported the module. A test process that had run
    one cluster lab sent the next lab's publish step to the first lab's Celery
    queue, which no worker consumed any more, and waited forever. Cluster runs
    are now driven from spawned processes, and a stale module is refused.
    """
    from datalab.config import settings
    from datalab.errors import DatalabError

    # built now or by an earlier test, for the settings of then
    from pipelines import definitions, runner

    monkeypatch.setenv("DATALAB_PROFILE", "cluster")
    monkeypatch.setenv("DATALAB_CATALOG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/lab")
    monkeypatch.setenv("DATALAB_CELERY_QUEUE", f"dl-test-{secrets.token_hex(4)}")
    s = settings()
    assert s != definitions.BUILT_WITH
    with pytest.raises(DatalabError, match="built for other settings"):
        runner._execute("publish__plant_telemetry", None, {}, s=s)
