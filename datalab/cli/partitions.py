"""``datalab partitions rollup``: remove the Dagster partitions of settled deliveries now.

What is settled is decided in the core (``datalab.store.state.settled``);
deleting partition keys is Dagster's work, so, as ``datalab cluster init``
does, this execs ``python -m pipelines.rollup`` (pipelines/rollup.py) in place
of this process; its output and exit status are the command's. The daily
schedule ``partitions_rollup_daily`` and the delivery sensor at
``DATALAB_MAX_PARTITIONS`` run the same roll-up (docs/scale.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from datalab.cli.service import local_only

ROOT = Path(__file__).resolve().parents[2]


def _exec(args: list[str]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    os.chdir(ROOT)
    os.execve(sys.executable, [sys.executable, "-m", "pipelines.rollup", *args], env)


def register(app: typer.Typer) -> None:
    partitions_app = typer.Typer(no_args_is_help=True, help="Dagster's delivery partitions: the roll-up (docs/scale.md).")
    app.add_typer(partitions_app, name="partitions")

    @partitions_app.command("rollup")
    def rollup(dry_run: bool = typer.Option(False, "--dry-run", help="print what would be removed, remove nothing"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Remove the partitions of settled deliveries past DATALAB_PARTITION_KEEP_DAYS (and past
        DATALAB_MAX_PARTITIONS the earliest settled); audited; prints what it removed."""
        local_only("partitions rollup")
        _exec([*(["--dry-run"] if dry_run else []), *(["--json"] if as_json else [])])
