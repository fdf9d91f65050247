"""``datalab cad inspect FILE``: what the lab sees in a CAD file, before anyone pushes it.

Runs the same sandboxed parse as a push (by content, in its own process,
with the time and memory limits), then prints the curated row's facts in
mm. Nothing is stored in the lab. Exit 1 when the file would be rejected.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

cad_app = typer.Typer(no_args_is_help=True, help="CAD files (STEP, STL, DXF).")
out = Console()

SHOWN = ("format", "schema", "originating_system", "preprocessor", "file_timestamp", "products", "is_assembly",
         "entity_count", "pmi_entities", "declared_unit", "unit_source", "length_unit", "solids", "faces", "edges",
         "triangles", "dxf_entities", "closed", "volume_mm3", "area_mm2", "bbox_x_mm", "bbox_y_mm", "bbox_z_mm",
         "curve_length_mm", "open_edges", "zero_normals", "degenerate_triangles", "closed_outlines", "open_outlines",
         "signature", "flags", "parse_seconds")


@cad_app.command("inspect")
def inspect(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a STEP, STL or DXF file"),
    contract: str = typer.Option(None, "--contract", help="apply this CAD contract's rules (id, file or tenant/product)"),
    unit: str = typer.Option(None, help="length unit assumed for files without one (default: the contract's, else mm)"),
    timeout: float = typer.Option(60.0, help="sandbox time limit in seconds"),
    memory_mib: int = typer.Option(2048, help="sandbox memory limit in MiB"),
    thumbnail: Path | None = typer.Option(None, help="write the thumbnail PNG here"),
    as_json: bool = typer.Option(False, "--json", help="print the row as JSON"),
) -> None:
    """Parse FILE in the sandbox and print its features (lengths in mm) and flags."""
    import dataclasses

    from datalab.cad import check, features, sandbox
    from datalab.cad.settings import LENGTH_MM, CadSettings

    if unit is not None and unit not in LENGTH_MM:
        raise typer.BadParameter(f"unknown unit {unit!r} (one of {', '.join(LENGTH_MM)})", param_hint="--unit")
    base = _contract_cad(contract) if contract else CadSettings()
    cad = dataclasses.replace(base, unitless_unit=unit or base.unitless_unit or "mm", parse_timeout_s=timeout,
                              parse_memory_bytes=memory_mib << 20)
    with tempfile.TemporaryDirectory() as tmp:
        thumb = thumbnail or Path(tmp) / "thumb.png"
        (o,) = sandbox.run([sandbox.Job("file", file, file.name, thumb)], workers=1, timeout_s=timeout,
                           memory_bytes=cad.parse_memory_bytes)
    if not o.ok or o.result is None:
        out.print(f"[red]rejected[/] {o.reason}", highlight=False)
        raise typer.Exit(1)
    reasons = check.contract_reasons(cad, file.name, o.result)
    row = features.row(o.result, cad, delivery_id="inspect", file_name=file.name, sha256="-", classification="-",
                       export_control=False, thumbnail=str(thumbnail) if thumbnail else None)
    if not contract and row.get("unit_source") == "contract":
        row["unit_source"] = "--unit" if unit else "assumed (mm; no --unit, no --contract)"
    not_applied = [] if contract else list(CONTRACT_RULES)
    if as_json:
        out.print_json(json.dumps({"contract": contract, "reasons": reasons, "rules_not_applied": not_applied,
                                   "row": row, "parsed": o.result}, default=str))
    else:
        t = Table("feature", "value", title=f"{file.name} ({o.seconds:.2f} s in the sandbox)")
        for k in SHOWN:
            if row.get(k) is not None:
                v = row[k]
                t.add_row(k, f"{v:,.6g}" if isinstance(v, float) else str(v))
        out.print(t)
        for r in reasons:
            out.print(f"[red]would be rejected:[/] {escape(r)}", highlight=False, soft_wrap=True)
        if not reasons:
            out.print(f"[green]would be accepted[/] {'under ' + escape(contract) if contract else 'by the checks every contract applies'}",
                      highlight=False, soft_wrap=True)
        if not_applied:
            out.print(f"not applied (no --contract): {', '.join(not_applied)}; give --contract C to check them",
                      highlight=False, soft_wrap=True)
    if reasons:
        raise typer.Exit(1)


# The rules that depend on the contract (datalab.cad.check.contract_reasons): without --contract
# they are checked against the defaults, which allow every format, assemblies and open outlines.
CONTRACT_RULES = ("cad.formats", "cad.assemblies", "cad.require_closed_outlines", "cad.unitless_unit")


def _contract_cad(ref: str) -> Any:
    """The CAD settings of contract ``ref``; a contract that is not a CAD contract is a usage error."""
    from datalab.config import settings
    from datalab.contracts import contract as contracts_mod
    from datalab.errors import UsageError

    c = contracts_mod.find(contracts_mod.load_all(settings().contracts_dir), ref)
    if c.kind != "cad" or c.section is None:
        e = UsageError(f"--contract {ref}: {c.id} is a {c.kind} contract, not a CAD contract")
        e.hint = "give a contract of kind cad (`datalab contract list` shows each contract's kind)"
        raise e
    return c.section
