"""CLI commands for measurement files and live streams (issue 22): ``contract draft`` and ``stream``."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console

out = Console()
err = Console(stderr=True)


def contract_draft(
    files: list[Path] = typer.Argument(..., help="sample file(s) of one format"),
    tenant: str = typer.Option(..., "--tenant", help="the firm's id"),
    product: str = typer.Option(None, help="the data product's short name (default: the file's name)"),
    to: Path = typer.Option(None, "--out", help="where to write the draft (default: PRODUCT.yaml)"),
) -> None:
    """Write a draft ODCS contract from sample files, then lint it: what is still missing is listed."""
    from datalab.contract import lint
    from datalab.measurement.draft import draft

    for f in files:
        if not f.is_file():
            err.print(f"[bold red]error:[/] {f}: no such file", highlight=False)
            raise typer.Exit(1)
    try:
        d = draft(files, tenant, product)
    except (ValueError, OSError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    path = to or Path(f"{d.doc['dataProduct']}.yaml")
    path.write_text(yaml.safe_dump(d.doc, sort_keys=False, allow_unicode=True, width=120))
    out.print(f"wrote {path}", highlight=False)
    problems = lint(path)
    for p in problems:
        out.print(f"  [yellow]missing:[/] {p}", highlight=False, soft_wrap=True)
    for n in d.notes:
        out.print(f"  [cyan]check:[/] {n}", highlight=False, soft_wrap=True)
    if not problems:
        out.print("  lint: no problems", highlight=False)


def register(app: typer.Typer, contract_app: typer.Typer) -> None:
    """Add the measurement commands to the main CLI."""
    contract_app.command("draft")(contract_draft)
