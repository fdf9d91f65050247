"""The CAD part of ``datalab demo``: Presses de Lyon delivers its press-tooling CAD next to its sensor data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from datalab.config import Settings, settings
from datalab.errors import PolicyRefused
from datalab.intake import landing
from datalab.store import pull

TOOLING = "urn:datalab:lyon-presses:tooling-cad"
GOOD = ["step/featuretype.STEP", "step/nist_ctc_01_asme1_rd.stp", "step/nist_ftc_11_asme1_rb.stp", "stl/featuretype.STL",
        "stl/busted.STL", "dxf/1002_tray_bottom.DXF", "dxf/wrench.dxf"]
BAD = ["dxf/broken_loop.dxf", "stl/stl_empty_bin.stl"]


def push_cad(contracts: dict[str, Any], cad_dir: Path) -> list[Any]:
    """One delivery of the good real files, and the two defective ones (rejected with their reasons)."""
    c = contracts[TOOLING]
    out = [landing.push(c, [cad_dir / p for p in GOOD if (cad_dir / p).exists()], actor="firm:lyon-presses")]
    out += [landing.push(c, [cad_dir / p], actor="firm:lyon-presses") for p in BAD if (cad_dir / p).exists()]
    return out


def publish_and_pull_cad(out: Any, pipelines: Any, pulled: Path, s: Settings | None = None) -> None:
    m = pipelines.publish("tooling-cad")
    out.print(f"tooling-cad@{m['version']}: {m['rows']:,} CAD files; classification {m['classification']}, "
              "export-controlled")
    try:
        pull.pull(f"tooling-cad@{m['version']}", "part-similarity", pulled, actor="team:ml-geometry", s=s)
    except PolicyRefused as e:
        out.print(f"[yellow]refused[/] tooling-cad for a team without export clearance: {e}", highlight=False)
    cleared = dataclasses.replace(s or settings(), export_cleared=True)  # a team cleared for dual-use data
    res = pull.pull(f"tooling-cad@{m['version']}", "part-similarity", pulled, actor="team:ml-geometry-cleared",
                    s=cleared)
    n = len(list((res.directory / "files").glob("*.*")))
    out.print(f"[green]pulled[/] tooling-cad@{res.version} (DATALAB_EXPORT_CLEARED=1): table of {res.rows} rows and "
              f"{n} CAD files -> {res.directory}")


def demo_push(contracts: dict[str, Any], real_dir: Path) -> list[Any]:
    """The demo's CAD pushes, when the real data holds the CAD files (datalab.kinds.faces)."""
    return push_cad(contracts, real_dir / "cad") if (real_dir / "cad").is_dir() else []


def demo_publish(out: Any, pipelines: Any, pulled: Path, real_dir: Path, s: Settings | None = None) -> None:
    """The demo's CAD publish and pulls, when the real data holds the CAD files (datalab.kinds.faces)."""
    if (real_dir / "cad").is_dir():
        publish_and_pull_cad(out, pipelines, pulled, s)
