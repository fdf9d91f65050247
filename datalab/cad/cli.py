"""``datalab cad inspect FILE``: what the lab sees in a CAD file, before anyone pushes it.

Runs the same sandboxed parse as a push (by content, in its own process,
with the time and memory limits), then prints the curated row's facts in
mm. Nothing is stored in the lab. Exit 1 when the file would be rejected.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer
from rich.console import Console
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
    unit: str = typer.Option("mm", help="length unit assumed for files without one (STL, unitless DXF)"),
    timeout: float = typer.Option(60.0, help="sandbox time limit in seconds"),
    memory_mib: int = typer.Option(2048, help="sandbox memory limit in MiB"),
    thumbnail: Path | None = typer.Option(None, help="write the thumbnail PNG here"),
    as_json: bool = typer.Option(False, "--json", help="print the row as JSON"),
) -> None:
    """Parse FILE in the sandbox and print its features (lengths in mm) and flags."""
    from datalab.cad import check, features, sandbox
    from datalab.cad.settings import LENGTH_MM, CadSettings

    if unit not in LENGTH_MM:
        raise typer.BadParameter(f"unknown unit {unit!r} (one of {', '.join(LENGTH_MM)})")
    cad = CadSettings(unitless_unit=unit, parse_timeout_s=timeout, parse_memory_bytes=memory_mib << 20)
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
    if as_json:
        out.print_json(json.dumps({"reasons": reasons, "row": row, "parsed": o.result}, default=str))
    else:
        t = Table("feature", "value", title=f"{file.name} ({o.seconds:.2f} s in the sandbox)")
        for k in SHOWN:
            if row.get(k) is not None:
                v = row[k]
                t.add_row(k, f"{v:,.6g}" if isinstance(v, float) else str(v))
        out.print(t)
        for r in reasons:
            out.print(f"[red]would be rejected:[/] {r}", highlight=False)
    if reasons:
        raise typer.Exit(1)
