"""CLI commands for measurement files and live streams (issue 22): ``contract draft`` and ``stream``."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)


def contract_draft(
    files: list[Path] = typer.Argument(..., help="sample file(s) of one format"),
    tenant: str = typer.Option(..., "--tenant", help="the firm's id"),
    product: str = typer.Option(None, help="the data product's short name (default: the file's name)"),
    to: Path = typer.Option(None, "--out", help="where to write the draft (default: PRODUCT.yaml)"),
) -> None:
    """Write a draft ODCS contract from sample files, then lint it: what is still missing is listed."""
    from datalab.contracts.contract import lint
    from datalab.intake.measurement.draft import draft

    for f in files:
        if not f.is_file():
            from datalab.cli.errors import fail

            fail(FileNotFoundError(2, "no such file", str(f)), err)
    try:
        d = draft(files, tenant, product)
    except (ValueError, OSError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    path = to or Path(f"{d.doc['dataProduct']}.yaml")
    path.write_text(yaml.safe_dump(d.doc, sort_keys=False, allow_unicode=True, width=120))
    out.print(f"wrote {escape(str(path))}", highlight=False)
    problems = lint(path)
    for p in problems:
        out.print(f"  [yellow]missing:[/] {escape(p)}", highlight=False, soft_wrap=True)
    for n in d.notes:
        out.print(f"  [cyan]check:[/] {escape(n)}", highlight=False, soft_wrap=True)
    if not problems:
        out.print("  lint: no problems", highlight=False)


def stream(
    contract: str = typer.Argument(..., help="contract id, file or tenant/product (long layout)"),
    mqtt_url: str = typer.Option(None, "--mqtt", help="MQTT broker, e.g. mqtt://127.0.0.1:1883"),
    topic: str = typer.Option(None, "--topic", help="MQTT topic (filter) the gateway publishes to"),
    opcua_url: str = typer.Option(None, "--opcua", help="OPC UA server, e.g. opc.tcp://plc:4840/ (instead of --mqtt)"),
    node: list[str] = typer.Option(None, "--node", help="OPC UA: NODEID=ENTITY/SENSOR[/UNIT], once per variable"),
    rows: int = typer.Option(10_000, help="close a delivery every ROWS readings ..."),
    seconds: float = typer.Option(60.0, help="... or SECONDS after its first reading"),
    key: str = typer.Option("id", help="the message field holding the delivery key (duplicates are dropped by it)"),
    client_id: str = typer.Option(None, help="MQTT client id of the persistent session (default: from the contract)"),
    idle_exit: float = typer.Option(None, help="stop after this many seconds without a message (default: run until stopped)"),
) -> None:
    """Land a live stream (MQTT or OPC UA) under a contract: a delivery with its receipt every ROWS readings or SECONDS."""
    import json

    from datalab.config import settings
    from datalab.contracts import contract as contracts_mod
    from datalab.intake.stream import StreamIngestor, run_mqtt

    if bool(mqtt_url) == bool(opcua_url) or (mqtt_url and not topic) or (opcua_url and not node):
        err.print("[bold red]error:[/] " + escape("give either --mqtt URL --topic T, or --opcua URL --node "
                                                  "NODEID=ENTITY/SENSOR[/UNIT]..."), highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    c = contracts_mod.find(contracts_mod.load_all(settings().contracts_dir), contract)
    try:
        ing = StreamIngestor(c, rows=rows, seconds=seconds, key=key, name="mqtt" if mqtt_url else "opcua")
        if opcua_url:
            from datalab.intake.stream_opcua import NodeMap

            nodes = [NodeMap.parse(n) for n in node]
    except ValueError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

    def show(r: dict) -> None:
        out.print(json.dumps({k: v for k, v in r.items() if k != "rejected_lines"} | {"rejected": len(r["rejected_lines"])}),
                  highlight=False, soft_wrap=True, markup=False)

    try:
        if opcua_url:
            from datalab.intake.stream_opcua import run_opcua

            run_opcua(ing, opcua_url, nodes, idle_exit=idle_exit, on_receipt=show)
        else:
            run_mqtt(ing, mqtt_url, topic, client_id=client_id, idle_exit=idle_exit, on_receipt=show)
    except (ConnectionError, OSError, ValueError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer, contract_app: typer.Typer) -> None:
    """Add the measurement commands to the main CLI."""
    contract_app.command("draft")(contract_draft)
    app.command("stream")(stream)
