"""The ``datalab`` command: every step of the lab, scriptable.

Exit codes: 0 success; 1 refused or failed (a rejected push, a failed
validation, a policy refusal); 2 wrong usage or invalid contract. ``push``,
``list`` and ``show`` take ``--json`` for machines.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from datalab import cli_service
from datalab import contract as contracts_mod
from datalab.config import settings
from datalab.errors import ContractError, DatalabError, NotFound, PolicyRefused

app = typer.Typer(add_completion=False, no_args_is_help=True, help="datalab: the federated data lab of an AI factory.")
contract_app = typer.Typer(no_args_is_help=True, help="Data contracts (ODCS v3).")
audit_app = typer.Typer(no_args_is_help=True, help="The append-only audit log.")
app.add_typer(contract_app, name="contract")
app.add_typer(audit_app, name="audit")
from datalab.cad.cli import cad_app  # noqa: E402  (CAD files, issue 3)

app.add_typer(cad_app, name="cad")
out = Console()
err = Console(stderr=True)


def _pipelines() -> Any:
    """The Dagster side, imported only by the commands that run pipelines."""
    try:
        return importlib.import_module("pipelines.runner")
    except ImportError as e:  # a push/pull-only install without Dagster
        raise DatalabError(f"this command needs the lab's pipelines (Dagster): {e}") from e


def _contracts() -> dict:
    return contracts_mod.load_all(settings().contracts_dir)


def _fail(e: Exception) -> None:
    code = 2 if isinstance(e, ContractError) else 1
    err.print(f"[bold red]error:[/] {e}", highlight=False)
    raise typer.Exit(code)


@contract_app.command("lint")
def contract_lint(files: list[Path] = typer.Argument(..., help="contract YAML files")) -> None:
    """Check contracts; print every problem with its field path."""
    bad = 0
    for f in files:
        problems = contracts_mod.lint(f)
        if problems:
            bad += 1
            err.print(f"[red]✗[/] {f}: {len(problems)} problem(s)", highlight=False)
            for p in problems:
                err.print(f"    {p}", highlight=False, markup=False)
        else:
            out.print(f"[green]✓[/] {f}", highlight=False)
    raise typer.Exit(2 if bad else 0)


@contract_app.command("list")
def contract_list() -> None:
    """The provider contracts the lab knows."""
    t = Table("id", "tenant", "kind", "layout", "version", "status", "residency", "purposes")
    for c in sorted(_contracts().values(), key=lambda c: c.id):
        t.add_row(c.id, c.tenant, c.kind, c.layout.shape, c.version, c.status, ",".join(c.policy.residency), ",".join(c.policy.purposes))
    out.print(t)


@app.command()
def sample(
    contract: str = typer.Argument(..., help="contract id, file or tenant/product"),
    rows: int = typer.Option(10_000, help="readings before duplicates"),
    seed: int = typer.Option(0),
    out_dir: Path = typer.Option(Path("samples"), "--out", help="where to write"),
    files: int = typer.Option(1, help="split into this many files"),
    fmt: str = typer.Option("csv", help="csv, csv.gz, csv.zst, tsv, parquet, jsonl"),
    clean: bool = typer.Option(False, help="no defects"),
) -> None:
    """Generate a deterministic sample delivery with real-world defects."""
    from datalab import sample as smp

    try:
        c = contracts_mod.find(_contracts(), contract)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = smp.cli_generate(c, rows, seed, out_dir, files=files, fmt=fmt, defects=smp.Defects.none() if clean else None)
    except (DatalabError, ValueError) as e:
        _fail(e)
    for p in paths:
        out.print(str(p))


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A byte progress bar per file on stderr (off when stderr is not a terminal); yields the callback."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as prog:
        tasks: dict[str, Any] = {}

        def cb(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = prog.add_task(name, total=total)
            prog.update(tasks[name], completed=done)

        yield cb


@app.command()
def push(
    contract: str = typer.Argument(..., help="contract id, file or tenant/product"),
    files: list[Path] = typer.Argument(..., help="the files of one delivery"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Push one delivery (one or more files) under a contract; prints its receipt."""
    from datalab import landing
    from datalab.pull import default_actor

    client = cli_service.remote()
    try:
        with _progress() as cb:
            rec = (cli_service.remote_push(client, contract, files, cb) if client
                   else landing.push(contracts_mod.find(_contracts(), contract), files, actor=default_actor(), progress=cb))
    except (DatalabError, ValueError) as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(rec.to_dict()))
    else:
        _print_receipt(rec)
    raise typer.Exit(0 if rec.accepted else 1)


def _print_receipt(rec: Any) -> None:
    colour = "green" if rec.accepted else "red"
    dup = " (already received: same bytes, same contract)" if rec.duplicate else ""
    out.print(f"[{colour}]{rec.status.upper()}[/] delivery {rec.delivery_id}{dup}", highlight=False)
    out.print(f"  contract {rec.contract_id} v{rec.contract_version}; {len(rec.files)} file(s), {rec.bytes:,} bytes, {rec.rows or 0:,} rows", highlight=False)
    for f in rec.files:
        out.print(f"  {f.name}: sha256 {f.sha256} {f.bytes:,} B {f.format or ''}", highlight=False)
    for r in rec.reasons:
        out.print(f"  [red]reason:[/] {r}", highlight=False, markup=True)


@app.command()
def receipts(
    tenant: str = typer.Option(None), status: str = typer.Option(None), as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List delivery receipts (optionally one firm's, or only rejected ones)."""
    from datalab import landing

    client = cli_service.remote()
    try:
        recs = client.receipts(status=status) if client else landing.list_receipts(tenant=tenant, status=status)
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps([r.to_dict() for r in recs]))
        return
    t = Table("delivery", "tenant", "contract", "status", "rows", "bytes", "reasons")
    for r in recs:
        t.add_row(r.delivery_id, r.tenant, r.contract_id.split(":")[-1], r.status, f"{r.rows or 0:,}", f"{r.bytes:,}", str(len(r.reasons)))
    out.print(t)


@app.command()
def run(contract: str = typer.Option(None, "--contract", help="only this contract")) -> None:
    """Materialise all pending deliveries through the Dagster definitions, in-process."""
    try:
        runs = _pipelines().run_pending(contract, on_event=lambda r: out.print(
            f"{'[green]✓[/]' if r.validation_ok else '[red]✗[/]'} {r.delivery_id} ({r.contract_id.split(':')[-1]}): {r.message}", highlight=False))
    except DatalabError as e:
        _fail(e)
    if not runs:
        out.print("nothing pending")
    raise typer.Exit(0 if all(r.validation_ok for r in runs) else 1)


@app.command()
def publish(name: str) -> None:
    """Publish a new version of a dataset if its inputs changed (through Dagster)."""
    try:
        md = _pipelines().publish(name)
    except DatalabError as e:
        _fail(e)
    if md.get("new_version"):
        out.print(f"[green]published[/] {name}@{md['version']}: {md['why']}; {md['rows']:,} rows", highlight=False)
    else:
        out.print(f"{name}: {md.get('why')}", highlight=False)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json"),
             purpose: str = typer.Option(None, help="over HTTP: only versions this purpose may reach")) -> None:
    """Datasets and their published versions."""
    from datalab.pull import list_datasets

    client = cli_service.remote()
    try:
        ds = cli_service.remote_list(client, purpose) if client else list_datasets()
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(ds))
        return
    t = Table("dataset", "latest", "versions")
    for d in ds:
        t.add_row(d["dataset"], d["latest"] or "-", ", ".join(f"{v}{' (withdrawn)' if d['status'][v] != 'active' else ''}" for v in d["versions"]))
    out.print(t)


@app.command()
def show(ref: str = typer.Argument(..., help="NAME or NAME@VERSION"), as_json: bool = typer.Option(False, "--json")) -> None:
    """A version's manifest summary (and its card)."""
    from datalab.publish import read_manifest
    from datalab.pull import parse_ref

    try:
        name, version = parse_ref(ref)
        m = read_manifest(name, version)
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(m, default=str))
        return
    out.print((settings().versions / name / m["version"] / "card.md").read_text(), markup=False, highlight=False)


@app.command()
def pull(
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    purpose: str = typer.Option(..., help="declared purpose of use, e.g. research"),
    to: Path = typer.Option(Path("."), help="directory to write into"),
) -> None:
    """Export a version as Parquet + manifest + card, after the policy check."""
    from datalab import pull as pl_

    client = cli_service.remote()
    try:
        if client:
            with _progress() as cb:
                res = client.pull(ref, purpose, to, progress=cb)
        else:
            res = pl_.pull(ref, purpose, to)
    except (DatalabError, PolicyRefused) as e:
        _fail(e)
    out.print(f"[green]pulled[/] {res.dataset}@{res.version}: {res.rows:,} rows, {len(res.files)} file(s), checksums verified -> {res.directory}", highlight=False)


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit log's hash chain."""
    from datalab.catalog import Catalog

    problems = Catalog(settings().catalog_url).verify_audit()
    for p in problems:
        err.print(f"[red]✗[/] {p}", highlight=False)
    if not problems:
        out.print("audit chain intact")
    raise typer.Exit(1 if problems else 0)


@audit_app.command("show")
def audit_show(action: str = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Audit entries (optionally of one action: push, publish, pull, open)."""
    from datalab.catalog import Catalog

    entries = Catalog(settings().catalog_url).audit_entries(action=action)
    if as_json:
        out.print_json(json.dumps([e.__dict__ for e in entries], default=str))
        return
    t = Table("seq", "ts", "actor", "action", "subject", "decision")
    for e in entries:
        t.add_row(str(e.seq), e.ts[:19], e.actor, e.action, e.subject, e.decision)
    out.print(t)


@app.command()
def ui(port: int = typer.Option(3000), host: str = typer.Option("127.0.0.1")) -> None:
    """Start the Dagster UI on this lab's instance (runs, checks, partitions)."""
    s = settings()
    _pipelines().instance()
    os.environ["DAGSTER_HOME"] = str(s.dagster_home)
    os.environ["DATALAB_HOME"] = str(s.home)
    root = Path(__file__).resolve().parent.parent
    exe = shutil.which("dagster") or "dagster"
    out.print(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={s.dagster_home})")
    os.chdir(root)
    os.execvp(exe, [exe, "dev", "-w", str(root / "workspace.yaml"), "-h", host, "-p", str(port)])


@app.command()
def demo(
    reset: bool = typer.Option(False, help="delete $DATALAB_HOME first"),
    rows: int = typer.Option(20_000, help="readings per firm and batch"),
    real: bool = typer.Option(True, help="also ingest the real C-MAPSS and hydraulic files"),
) -> None:
    """The end-to-end demo: push, ingest, curate, validate, publish, pull."""
    from datalab.demo import run_demo

    s = settings()
    if reset and s.home.exists():
        shutil.rmtree(s.home)
    try:
        run_demo(out, rows=rows, real=real, pipelines=_pipelines())
    except DatalabError as e:
        _fail(e)


# Sovereignty commands (policy explain/purposes, replicate, diff, contract
# withdraw, retention enforce) live in their own module.
from datalab.cli_sovereignty import register as _register_sovereignty  # noqa: E402

_register_sovereignty(app, contract_app)
from datalab.cli_formats import register as _register_formats  # noqa: E402  (measurement files, issue 22)

_register_formats(app, contract_app)

cli_service.register(app, audit_app)
from datalab.cli_cluster import register as _register_cluster  # noqa: E402  (cluster profile, issue 19)

_register_cluster(app)


def main() -> None:
    try:
        app()
    except ContractError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except NotFound as e:
        err.print(f"[bold red]not found:[/] {e}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
