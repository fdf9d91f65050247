"""``datalab partitions rollup``: remove the Dagster partitions of settled deliveries now.

What is settled is decided in the core (``datalab.store.state.settled``);
deleting partition keys is the pipelines' work, reached through the runner
(``datalab.runs.Runner.rollup``) as ``datalab run`` and ``publish`` reach
theirs. The daily schedule ``partitions_rollup_daily`` and the delivery
sensor at ``DATALAB_MAX_PARTITIONS`` run the same roll-up (docs/scale.md).
"""

from __future__ import annotations

import json

import typer

from datalab import runs
from datalab.cli import errors as cli_errors
from datalab.cli.service import local_only
from datalab.errors import DatalabError


def register(app: typer.Typer) -> None:
    partitions_app = typer.Typer(no_args_is_help=True, help="Dagster's delivery partitions: the roll-up (docs/scale.md).")
    app.add_typer(partitions_app, name="partitions")

    @partitions_app.command("rollup")
    def rollup(dry_run: bool = typer.Option(False, "--dry-run", help="print what would be removed, remove nothing"),
               as_json: bool = typer.Option(False, "--json")) -> None:
        """Remove the partitions of settled deliveries past DATALAB_PARTITION_KEEP_DAYS (and past
        DATALAB_MAX_PARTITIONS the earliest settled); audited; prints what it removed."""
        local_only("partitions rollup")
        from datalab.store.pull import default_actor

        try:
            reports = runs.runner().rollup(dry_run, default_actor())
        except DatalabError as e:
            cli_errors.fail(e, cli_errors.err)
        if as_json:
            cli_errors.out.print_json(json.dumps(reports, default=str))
            return
        for r in reports:
            cli_errors.out.print(r["summary"], highlight=False, soft_wrap=True)
            for d in r["deliveries"]:
                version = f" in {d['version']}" if d.get("version") else ""
                cli_errors.out.print(f"  {d['id']}  {d['settled']} at {d['at']}{version} ({d['rule']})",
                                     highlight=False, soft_wrap=True)
