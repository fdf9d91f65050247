"""The cluster profile's Dagster side: instance on PostgreSQL, queued runs, Celery workers.

``DATALAB_PROFILE=cluster`` changes three things, all derived from
:func:`datalab.config.settings` (docs/scale.md):

* the Dagster instance (``$DATALAB_HOME/dagster/dagster.yaml``) keeps runs,
  event logs and schedules in PostgreSQL (dagster-postgres), so the UI, the
  daemon and every worker share one instance;
* runs go through the queued run coordinator with a concurrency limit per
  ``tenant`` tag (every ingest job carries its firm's tag), so one firm pushing
  thousands of deliveries cannot hold every run slot;
* steps execute on Celery workers (RabbitMQ broker) that load this repository's
  code: ``datalab worker`` starts one.

Run as ``python -m pipelines.cluster init|worker`` (what ``datalab cluster
init`` and ``datalab worker`` exec).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from datalab.config import Settings, settings
from datalab.errors import DatalabError

ROOT = Path(__file__).resolve().parent.parent
CELERY_BACKEND = "rpc://"
# What every worker imports besides dagster_celery's tasks: the lab's code location.
INCLUDES = ["pipelines.definitions"]
# Every ingest run carries its contract's slug under this tag; at most one run per contract at a
# time: which of two deliveries keeps a reading both hold depends on which was curated first
# (datalab.timeseries.curate.earlier_curated), so two runs of one contract must not curate at once.
CONTRACT_TAG = "datalab/contract"
ONE_RUN_PER_CONTRACT = {"key": CONTRACT_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


def instance_config(s: Settings) -> dict[str, Any]:
    """The ``dagster.yaml`` of this profile (local: SQLite under home, as before)."""
    cfg: dict[str, Any] = {"telemetry": {"enabled": False}}
    if s.profile != "cluster":
        # Dagster's SQLite event log, keeping its connections open (pipelines.dagster_storage);
        # the files are where Dagster's default storage puts them, so an instance keeps its history.
        cfg["event_log_storage"] = {"module": "pipelines.dagster_storage", "class": "PooledSqliteEventLogStorage",
                                    "config": {"base_dir": str(s.dagster_home / "history" / "runs")}}
        # the daemon's queue (`datalab ui`): runs of different contracts at once, one per contract
        cfg["run_queue"] = {"tag_concurrency_limits": [ONE_RUN_PER_CONTRACT]}
        return cfg
    if not s.dagster_pg_url:
        raise DatalabError(
            "DATALAB_PROFILE=cluster keeps Dagster's runs in PostgreSQL: set DATALAB_CATALOG_URL to a "
            "postgresql+psycopg:// URL (or DATALAB_DAGSTER_PG_URL to a postgresql+psycopg2:// URL)")
    cfg["storage"] = {"postgres": {"postgres_url": s.dagster_pg_url}}
    cfg["run_coordinator"] = {
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {
            "max_concurrent_runs": s.max_concurrent_runs,
            # fair share: at most N runs of any one firm at a time
            "tag_concurrency_limits": [
                {"key": "tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": s.tenant_run_limit},
                ONE_RUN_PER_CONTRACT,
            ],
        },
    }
    cfg["run_launcher"] = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
    # runs whose worker died are marked failed and retried by the daemon
    cfg["run_monitoring"] = {"enabled": True, "poll_interval_seconds": 5}
    cfg["run_retries"] = {"enabled": True, "max_retries": 2}
    return cfg


def executor_config(s: Settings) -> dict[str, Any]:
    """The Celery executor's config: the broker the workers listen on."""
    return {"broker": s.broker_url, "backend": CELERY_BACKEND, "include": INCLUDES,
            "config_source": {"task_default_queue": s.celery_queue}}


def write_instance(s: Settings | None = None) -> Path:
    """Write ``dagster.yaml`` for the profile; returns DAGSTER_HOME.

    Regenerated on every call (cheap) so that changing ``DATALAB_PROFILE`` or
    the catalog URL never leaves a stale instance configuration behind.
    """
    s = s or settings()
    s.dagster_home.mkdir(parents=True, exist_ok=True)
    cfg = s.dagster_home / "dagster.yaml"
    text = yaml.safe_dump(instance_config(s), sort_keys=False)
    if not cfg.exists() or cfg.read_text() != text:
        cfg.write_text(text)
    return s.dagster_home


def instance(s: Settings | None = None) -> Any:
    """The lab's Dagster instance: SQLite under home (local) or PostgreSQL (cluster).

    Here rather than in ``pipelines.runner`` so that the retention job
    (``pipelines.retention``, part of the definitions) reaches it without
    importing the runner, which imports the definitions.
    """
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(write_instance(s))
    return dg.DagsterInstance.get()


def celery_config_dir(s: Settings) -> Path:
    """A folder holding ``dagster_celery_config.py`` for the workers (as dagster-celery's CLI does)."""
    d = s.dagster_home / "celery"
    d.mkdir(parents=True, exist_ok=True)
    (d / "dagster_celery_config.py").write_text(
        f"broker_url = {s.broker_url!r}\nresult_backend = {CELERY_BACKEND!r}\n"
        # one task at a time per worker process: a killed worker loses at most
        # its own step, which the broker redelivers (acks_late)
        "worker_prefetch_multiplier = 1\ntask_acks_late = True\ntask_reject_on_worker_lost = True\n")
    return d


def worker_command(s: Settings, name: str | None = None, concurrency: int = 1) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one Celery worker with the lab's code."""
    conf = celery_config_dir(s)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(conf), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["DAGSTER_HOME"] = str(s.dagster_home)
    node = f"{name or 'datalab'}-{os.getpid()}@{socket.gethostname()}"
    cmd = [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "--loglevel", "WARNING",
           "-n", node, "-c", str(concurrency), "-Q", s.celery_queue, "-I", ",".join(INCLUDES), "--without-gossip", "--without-mingle"]
    return cmd, env


def check_broker(url: str, timeout: float = 3.0) -> None:
    """Refuse with the reason when the broker does not answer (no traceback)."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as c:
            c.ensure_connection(max_retries=1)
    except Exception as e:
        raise DatalabError(f"the Celery broker {url} does not answer ({e}); start RabbitMQ or set DATALAB_BROKER_URL") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.cluster")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("init", help="write dagster.yaml for DATALAB_PROFILE")
    w = sub.add_parser("worker", help="start a Celery worker with the lab's code")
    w.add_argument("--name", default=None)
    w.add_argument("--concurrency", type=int, default=1)
    a = p.parse_args(argv)
    try:
        s = settings()
        home = write_instance(s)
        if a.cmd == "init":
            print(f"DAGSTER_HOME={home} (profile {s.profile})")
            print((home / "dagster.yaml").read_text(), end="")
            return 0
        if s.profile != "cluster":
            raise DatalabError("a worker serves the cluster profile: set DATALAB_PROFILE=cluster")
        check_broker(s.broker_url)
        from datalab.policy.retention import clean_interrupted

        if cleaned := clean_interrupted(s):  # what a killed worker left in this machine's scratch folder
            print(f"removed {len(cleaned)} file(s) of interrupted work: {', '.join(cleaned[:5])}", file=sys.stderr)
        cmd, env = worker_command(s, a.name, a.concurrency)
        os.chdir(ROOT)
        os.execve(cmd[0], cmd, env)
    except DatalabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
