"""CLI commands for sovereignty: policy explain, purposes, diff,
contract withdraw, retention enforce (``replicate`` is a federation command
now: a DSP negotiation and transfer, datalab/cli/federation.py). Registered on the main app by
:func:`register` (a few lines in ``datalab/cli/commands.py``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, NoReturn

import typer
from rich.console import Console

from datalab.cli.service import local_note, local_only
from datalab.errors import DatalabError, UsageError

out = Console()
err = Console(stderr=True)
policy_app = typer.Typer(no_args_is_help=True, help="Sovereignty policies: explain, vocabulary.")
retention_app = typer.Typer(no_args_is_help=True, help="Retention enforcement (also a daily Dagster schedule).")


def _fail(e: BaseException) -> NoReturn:
    """One line by the CLI's error handler (markup rendered, the message escaped)."""
    from datalab.cli.errors import fail

    fail(e, err)


def _hook() -> Any:
    """The pipelines' purge hook when they are installed (datalab/runs.py), else None."""
    from datalab.runs import optional_runner

    r = optional_runner()
    return r.purge if r is not None else None


def _actor() -> str:
    from datalab.store.pull import default_actor

    return default_actor()


@policy_app.command("explain")
def policy_explain(ref: str = typer.Argument(..., help="NAME@VERSION"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Every field of a version's effective policy and which input set it."""
    from datalab.policy import sovereignty
    from datalab.store.pull import parse_ref

    try:
        local_only("policy explain")
        name, version = parse_ref(ref)
        x = sovereignty.explain(name, version)
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(x, default=str))
    else:
        out.print(sovereignty.render_explain(x), markup=False, highlight=False, soft_wrap=True)


@policy_app.command("purposes")
def policy_purposes(as_json: bool = typer.Option(False, "--json")) -> None:
    """The purpose vocabulary (data_contracts/purposes.yaml) with its hierarchy."""
    from datalab.contracts import purposes

    local_note("policy purposes", "the vocabulary in DATALAB_CONTRACTS")
    try:
        v = purposes.load()
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps({"version": v.version, "path": str(v.path), "purposes": [
            {"purpose": p, "parent": v.parents[p], "description": v.descriptions[p]} for p in sorted(v.parents)]}))
        return
    out.print(f"purpose vocabulary v{v.version} ({v.path})", markup=False, highlight=False, soft_wrap=True)
    for p in sorted(v.parents):
        out.print(f"{'  ' * p.count('.')}{p}: {v.descriptions[p]}", markup=False, highlight=False, soft_wrap=True)


def diff(a: str = typer.Argument(..., help="NAME@A"), b: str = typer.Argument(..., help="NAME@B"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Schema changes, row deltas per contract and firm, policy changes, drift per numeric column."""
    from datalab.store import vdiff
    from datalab.store.pull import parse_ref

    try:
        local_only("diff")
        na, va = parse_ref(a)
        nb, vb = parse_ref(b)
        if na != nb or not va or not vb:
            raise UsageError("diff compares two versions of one dataset: NAME@A NAME@B")
        d = vdiff.diff(na, va, vb)
    except DatalabError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(d, default=str))
    else:
        out.print(vdiff.render(d), markup=False, highlight=False, soft_wrap=True)


def contract_withdraw(contract: str = typer.Argument(..., help="contract id or tenant/product"),
                      reason: str = typer.Option(..., "--reason", help="why (kept in the audit log)")) -> None:
    """Withdraw a contract: its data is deleted, versions holding it are withdrawn."""
    from datalab.policy import retention

    try:
        local_only("contract withdraw")
        r = retention.withdraw_contract(contract, _actor(), reason, hook=_hook())
    except DatalabError as e:
        _fail(e)
    _print_report(r)


def _print_report(r: Any) -> None:
    out.print(f"{r.contract_id}: {r.status}; {len(r.deliveries)} deliveries, {r.files_deleted} files "
              f"({r.bytes_deleted:,} bytes) deleted; versions withdrawn: {', '.join(r.versions_withdrawn) or 'none'}",
              markup=False, highlight=False, soft_wrap=True)


@retention_app.command("enforce")
def retention_enforce(today: str = typer.Option(None, help="evaluate retention as of this date (YYYY-MM-DD)")) -> None:
    """Delete data past retention_until now (the schedule does this daily)."""
    from datalab.policy import retention

    try:
        local_only("retention enforce")
        day = dt.date.fromisoformat(today) if today else None
        reports = retention.enforce(day, actor=_actor(), hook=_hook())
    except (DatalabError, ValueError) as e:
        _fail(e)
    for r in reports:
        _print_report(r)
    if not reports:
        out.print("nothing past its retention date")


def register(app: typer.Typer, contract_app: typer.Typer) -> None:
    """Add the sovereignty commands to the main CLI."""
    app.add_typer(policy_app, name="policy")
    app.add_typer(retention_app, name="retention")
    app.command("diff")(diff)
    contract_app.command("withdraw")(contract_withdraw)
