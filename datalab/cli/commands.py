"""The ``datalab`` command: every step of the lab, scriptable.

Exit codes (one handler for all commands, ``datalab/cli/errors.py``): 0
success; 1 refused or failed (a rejected push, a failed validation, a policy
refusal); 2 wrong usage or invalid contract; 3 not found; 4 a filesystem
path that cannot be used; 5 the service (``DATALAB_URL``) or catalog does
not answer; 70 a bug in datalab. An error is one line, "what failed — what
to do"; ``--debug`` (or ``DATALAB_DEBUG=1``) adds the traceback. Every list
command takes ``--json`` for machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from datalab import runs
from datalab.cli import errors as cli_errors
from datalab.cli import service as cli_service
from datalab.cli.table import print_table
from datalab.config import settings
from datalab.contracts import contract as contracts_mod
from datalab.errors import DatalabError, PolicyRefused
from datalab.kinds import faces as kind_faces
from datalab.store.storage import store, version_key

app = typer.Typer(add_completion=False, no_args_is_help=True, help="datalab: the federated data lab of an AI factory.")
contract_app = typer.Typer(no_args_is_help=True, help="Data contracts (ODCS v3).")
audit_app = typer.Typer(no_args_is_help=True, help="The append-only audit log.")
app.add_typer(contract_app, name="contract")
app.add_typer(audit_app, name="audit")
for _name, _sub in kind_faces.cli_apps():  # each kind's sub-commands (datalab cad ..., issue 3)
    app.add_typer(_sub, name=_name)
out, err = cli_errors.out, cli_errors.err


def _pipelines() -> runs.Runner:
    """The pipelines (Dagster), found only by the commands that run them (datalab/runs.py).

    A push/pull-only install without them gets ``RunnerMissing``, a DatalabError.
    """
    return runs.runner()


def _contracts() -> dict:
    return contracts_mod.load_all(settings().contracts_dir)


def _fail(e: BaseException) -> NoReturn:
    """One line and the exit code of ``e``'s kind (``datalab/cli/errors.py``)."""
    cli_errors.fail(e, err)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="print the traceback of an error (or set DATALAB_DEBUG=1)")) -> None:
    """datalab: the federated data lab of an AI factory."""
    if debug:
        os.environ["DATALAB_DEBUG"] = "1"


@contract_app.command("lint")
def contract_lint(files: list[Path] = typer.Argument(..., help="contract YAML files")) -> None:
    """Check contracts; print every problem with its field path."""
    bad = 0
    for f in files:
        problems = contracts_mod.lint(f)
        if problems:
            bad += 1
            err.print(f"[red]✗[/] {f}: {len(problems)} problem(s)", highlight=False, soft_wrap=True)
            for p in problems:
                err.print(f"    {p}", highlight=False, markup=False, soft_wrap=True)
        else:
            out.print(f"[green]✓[/] {f}", highlight=False)
    raise typer.Exit(2 if bad else 0)


@contract_app.command("list")
def contract_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """The provider contracts the lab knows."""
    cli_service.local_note("contract list", f"the contracts in {settings().contracts_dir} (DATALAB_CONTRACTS)")
    cs = sorted(_contracts().values(), key=lambda c: c.id)
    if as_json:
        out.print_json(json.dumps([{"id": c.id, "tenant": c.tenant, "kind": c.kind, "layout": c.layout.shape,
                                    "version": c.version, "status": c.status, "residency": list(c.policy.residency),
                                    "purposes": list(c.policy.purposes)} for c in cs]))
        return
    print_table(out, ("id", "tenant", "kind", "layout", "version", "status", "residency", "purposes"),
                ([c.id, c.tenant, c.kind, c.layout.shape, c.version, c.status, ",".join(c.policy.residency),
                  ",".join(c.policy.purposes)] for c in cs), ids=("id",))
    broken = getattr(_contracts(), "broken", {})
    for path, problems in sorted(broken.items()):
        # Reported, never fatal: the other firms' contracts above stay usable.
        err.print(f"[bold red]broken:[/] {path} ({len(problems)} problem(s); it takes no pushes until fixed)", highlight=False)
        for x in problems:
            err.print(f"  - {x}", highlight=False)
    if broken:
        raise typer.Exit(2)


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
    from datalab.kinds import kind_of

    try:
        c = contracts_mod.find(_contracts(), contract)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = kind_of(c).sample(c, out_dir, rows, seed=seed, files=files, fmt=fmt, clean=clean)
    except (DatalabError, ValueError) as e:
        _fail(e)
    for p in paths:  # whole paths, one per line, never wrapped: they are pasted into `push`
        out.print(str(p), soft_wrap=True, highlight=False, markup=False)


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
    correction: bool = typer.Option(False, "--correction", help="the delivery corrects readings already delivered: "
                                    "its readings replace earlier ones with the same entity, time and sensor"),
) -> None:
    """Push one delivery (one or more files) under a contract; prints its receipt.

    A reading whose entity, time and sensor an earlier delivery of the
    contract already holds is a repeat: excluded from the next version and
    counted on its card, unless the delivery is declared a ``--correction``.
    """
    from datalab.intake import landing
    from datalab.store.pull import default_actor

    client = cli_service.remote()
    try:
        with _progress() as cb:
            rec = (cli_service.remote_push(client, contract, files, cb, correction=correction) if client
                   else landing.push(contracts_mod.find(_contracts(), contract), files, actor=default_actor(), progress=cb,
                                     correction=correction))
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
    out.print(f"  contract {rec.contract_id} v{rec.contract_version}; {len(rec.files)} file(s), {rec.bytes:,} bytes, {rec.rows or 0:,} rows delivered "
              "(file rows; the card counts readings, one per sensor value)", highlight=False)
    for f in rec.files:
        out.print(f"  {f.name}: sha256 {f.sha256} {f.bytes:,} B {f.format or ''}", highlight=False)
    if getattr(rec, "correction", False):
        out.print("  declared a correction: its readings replace earlier ones with the same key", highlight=False)
    for r in rec.reasons:
        out.print(f"  [red]reason:[/] {r}", highlight=False, markup=True)
    for w in getattr(rec, "warnings", []) or []:
        out.print(f"  [yellow]warning:[/] {w}", highlight=False, markup=True)
    if getattr(rec, "decided_by", ""):
        out.print(f"  decided by: {rec.decided_by}", highlight=False)


@app.command()
def receipts(
    tenant: str = typer.Option(None), status: str = typer.Option(None), as_json: bool = typer.Option(False, "--json"),
    limit: int = typer.Option(100, min=1, help="at most this many receipts (oldest first)"),
    offset: int = typer.Option(0, min=0, help="skip this many first"),
) -> None:
    """List delivery receipts (optionally one firm's, or only rejected ones), a page at a time."""
    from datalab.intake import landing

    client = cli_service.remote()
    try:
        if not client:
            cli_service.require_lab()
        recs = (client.receipts(status=status, limit=limit, offset=offset) if client
                else landing.list_receipts(tenant=tenant, status=status, limit=limit, offset=offset))
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps([r.to_dict() for r in recs]))
        return
    print_table(out, ("delivery", "tenant", "contract", "status", "rows delivered", "bytes", "reasons", "warnings"),
                ([r.delivery_id + (" (correction)" if getattr(r, "correction", False) else ""), r.tenant,
                  r.contract_id.split(":")[-1], r.status, f"{r.rows or 0:,}", f"{r.bytes:,}", str(len(r.reasons)),
                  str(len(getattr(r, "warnings", []) or []))] for r in recs), ids=("delivery",))


@app.command()
def run(contract: str = typer.Option(None, "--contract", help="only this contract")) -> None:
    """Materialise all pending deliveries through the Dagster definitions, in-process."""
    cli_service.local_note("run")
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
    cli_service.local_note("publish")
    try:
        md = _pipelines().publish(name)
    except DatalabError as e:
        _fail(e)
    if md.get("new_version"):
        out.print(f"[green]published[/] {name}@{md['version']}: {md['why']}; {md['rows']:,} rows of the published table (readings, or CAD files)", highlight=False)
    else:
        out.print(f"{name}: {md.get('why')}", highlight=False)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json"),
             purpose: str = typer.Option(None, help="over HTTP: only versions this purpose may reach")) -> None:
    """Datasets and their published versions."""
    from datalab.store.pull import list_datasets

    client = cli_service.remote()
    try:
        if not client:
            cli_service.require_lab()
        ds = cli_service.remote_list(client, purpose) if client else list_datasets()
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(ds))
        return
    print_table(out, ("dataset", "latest", "versions"),
                ([d["dataset"], d["latest"] or "-",
                  ", ".join(f"{v}{' (withdrawn)' if d['status'][v] != 'active' else ''}" for v in d["versions"])]
                 for d in ds), ids=("dataset", "latest"))


@app.command()
def show(ref: str = typer.Argument(..., help="NAME or NAME@VERSION"), as_json: bool = typer.Option(False, "--json"),
         purpose: str = typer.Option(None, help="only if this purpose may use the version (required over HTTP)")) -> None:
    """A version's dataset card (``--json``: its manifest), locally or over DATALAB_URL."""
    from datalab.store.manifests import read_manifest
    from datalab.store.pull import check_policy, check_site_cap, parse_ref

    client = cli_service.remote()
    if client:
        m, card = cli_service.remote_show(client, ref, purpose, as_json)
    else:
        cli_service.require_lab()
        name, version = parse_ref(ref)
        man = read_manifest(name, version)
        check_site_cap(man, settings())  # DATALAB_SITE: only what the site may hold
        if purpose:  # the pull's own check, without pulling: a purpose that may not use it does not see it
            check_policy(man, purpose, settings())
        m = man.to_dict()
        card = None if as_json else store(settings()).read_text(version_key(name, man.version, "card.md"))
    if as_json:
        out.print_json(json.dumps(m, default=str))
        return
    out.print(card, markup=False, highlight=False, soft_wrap=True)


@app.command()
def pull(
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    purpose: str = typer.Option(..., help="declared purpose of use, e.g. research"),
    to: Path = typer.Option(Path("."), help="directory to write into"),
) -> None:
    """Export a version as Parquet + manifest + card, after the policy check."""
    from datalab.store import pull as pl_

    client = cli_service.remote()
    try:
        if client:
            with _progress() as cb:
                res = client.pull(ref, purpose, to, progress=cb)
        else:
            cli_service.require_lab()
            res = pl_.pull(ref, purpose, to)
    except (DatalabError, PolicyRefused) as e:
        _fail(e)
    out.print(f"[green]pulled[/] {res.dataset}@{res.version}: {res.rows:,} table rows, {len(res.files)} file(s), checksums verified -> {res.directory}", highlight=False)


@audit_app.command("verify")
def audit_verify(
    checkpoints: Path = typer.Option(None, "--checkpoints", help="signed checkpoint file to check the log against "
                                     "(default: DATALAB_AUDIT_CHECKPOINTS or the lab's own, if it exists)"),
) -> None:
    """Recompute the audit log's keyed hash chain and check it against the signed checkpoints.

    Over DATALAB_URL (admin token) the service checks its chain; checkpoints are checked locally only.
    """
    from datalab.policy import audit_checkpoints
    from datalab.store.catalog import Catalog

    client = cli_service.remote()
    if client:
        problems = client.get_json("/v1/admin/audit/verify")["problems"]
    else:
        cli_service.require_lab()
        s = settings()
        try:
            problems = Catalog(s.catalog_url).verify_audit()
            cp = checkpoints or audit_checkpoints.default_path(s)
            if checkpoints is not None or cp.is_file():
                problems += audit_checkpoints.verify(cp, s)
        except ValueError as e:
            _fail(e)
    for p in problems:
        err.print(f"[red]✗[/] {p}", highlight=False)
    if not problems:
        out.print("audit chain intact" + (f" and consistent with the checkpoints in {cp}" if cp.is_file() else
                                          " (no checkpoint file: deleted newest entries would not show)"))
    raise typer.Exit(1 if problems else 0)


@audit_app.command("checkpoint")
def audit_checkpoint(
    to: Path = typer.Option(None, "--to", help="checkpoint file (default: DATALAB_AUDIT_CHECKPOINTS or "
                            "$DATALAB_HOME/audit/checkpoints.jsonl); keep it where the database's writers cannot"),
) -> None:
    """Append a signed checkpoint of the audit head to a file outside the database (run it from cron)."""
    from datalab.policy import audit_checkpoints

    s = settings()
    path = to or audit_checkpoints.default_path(s)
    try:
        cp = audit_checkpoints.checkpoint(path, s)
    except (OSError, ValueError) as e:
        _fail(e)
    out.print(f"checkpoint: entry {cp['seq']}, hash {cp['hash'][:16]}... -> {path}", highlight=False)


@audit_app.command("show")
def audit_show(action: str = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Audit entries (optionally of one action: push, publish, pull, open); over DATALAB_URL with an admin token."""
    from datalab.store.catalog import Catalog

    client = cli_service.remote()
    if client:
        rows = cli_service.remote_audit(client, action)
    else:
        cli_service.require_lab()
        rows = [e.__dict__ for e in Catalog(settings().catalog_url).audit_entries(action=action)]
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    print_table(out, ("seq", "ts", "actor", "action", "subject", "decision"),
                ([str(e["seq"]), str(e["ts"])[:19], e["actor"], e["action"], e["subject"], e["decision"]] for e in rows),
                ids=("seq", "actor", "subject"))


@app.command()
def ui(port: int = typer.Option(3000), host: str = typer.Option("127.0.0.1")) -> None:
    """Start the Dagster UI on this lab's instance (runs, checks, partitions); stops on SIGTERM or Ctrl-C."""
    from datalab.cli import ui as ui_mod

    s = settings()
    exe = ui_mod.dagster_exe()
    _pipelines().instance()
    env = {**os.environ, "DAGSTER_HOME": str(s.dagster_home), "DATALAB_HOME": str(s.home)}
    root = Path(__file__).resolve().parents[2]
    out.print(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={s.dagster_home}); Ctrl-C or SIGTERM stops it", highlight=False)
    rc = ui_mod.run_child([str(exe), "dev", "-w", str(root / "workspace.yaml"), "-h", host, "-p", str(port)], root, env)
    raise typer.Exit(rc)


@app.command()
def demo(
    reset: bool = typer.Option(False, help="delete $DATALAB_HOME first"),
    rows: int = typer.Option(20_000, help="readings per firm and batch"),
    real: bool = typer.Option(True, help="also ingest the real C-MAPSS and hydraulic files"),
) -> None:
    """The end-to-end demo: push, ingest, curate, validate, publish, pull."""
    from datalab.cli.demo import run_demo

    s = settings()
    if reset and s.home.exists():
        shutil.rmtree(s.home)
    try:
        run_demo(out, rows=rows, real=real, pipelines=_pipelines())
    except DatalabError as e:
        _fail(e)


# Sovereignty commands (policy explain/purposes, diff, contract withdraw,
# retention enforce) live in their own module; replicate is a federation command.
from datalab.cli.sovereignty import register as _register_sovereignty  # noqa: E402

_register_sovereignty(app, contract_app)
from datalab.cli.formats import register as _register_formats  # noqa: E402  (measurement files, issue 22)

_register_formats(app, contract_app)

cli_service.register(app, audit_app)
from datalab.cli.federation import register as _register_federation  # noqa: E402  (issue 18)

_register_federation(app)

from datalab.cli.cluster import register as _register_cluster  # noqa: E402  (cluster profile, issue 19)

_register_cluster(app)
from datalab.cli.partitions import register as _register_partitions  # noqa: E402  (partition roll-up)

_register_partitions(app)


def main() -> None:
    """The console script: every error that escapes a command is reported once, by kind."""
    cli_errors.run(app)


if __name__ == "__main__":
    main()
