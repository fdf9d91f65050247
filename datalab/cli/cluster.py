"""``datalab worker`` and ``datalab cluster init``: the cluster profile's commands.

The core never imports Dagster, so these exec ``python -m pipelines.cluster``
(the Dagster side) in place of this process: a worker is a long-lived Celery
process with the lab's code, and its exit status is the command's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[2]


def _exec(args: list[str]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    os.chdir(ROOT)
    os.execve(sys.executable, [sys.executable, "-m", "pipelines.cluster", *args], env)


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(no_args_is_help=True, help="the cluster profile (docs/scale.md)")
    app.add_typer(cluster_app, name="cluster")

    @cluster_app.command("init")
    def init() -> None:
        """Write $DATALAB_HOME/dagster/dagster.yaml for DATALAB_PROFILE and print it."""
        _exec(["init"])

    @app.command()
    def worker(name: str = typer.Option(None, help="worker name (default datalab)"),
               concurrency: int = typer.Option(1, help="steps this worker runs at once")) -> None:
        """Start a Celery worker with the lab's code (DATALAB_PROFILE=cluster)."""
        _exec(["worker", *(["--name", name] if name else []), "--concurrency", str(concurrency)])
