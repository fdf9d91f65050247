"""What runs inside the sandbox: one file in, a plain dict of native facts (and a thumbnail) out.

This module is preloaded by the sandbox's fork server, so OpenCASCADE,
ezdxf and matplotlib are imported once and every file is parsed in a fresh
process forked from that warm one. The dict holds what the file says, in
its own units (STEP geometry excepted: OpenCASCADE converts to mm, noted in
``values_unit``); the contract's units and the lab's flags are applied
later, in ``datalab.cad.features``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from datalab.cad import dxf, sniff, step_header, stl, thumbnail


def warm() -> None:
    """Import the heavy libraries (called in the fork server, once)."""
    import ezdxf  # noqa: F401
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.collections
    import matplotlib.figure
    from matplotlib import font_manager

    font_manager.fontManager  # noqa: B018 - builds/loads the font cache once, not per file

    try:
        import OCP.BRepGProp
        import OCP.BRepMesh
        import OCP.STEPControl  # noqa: F401
    except ImportError:  # pragma: no cover - reported per STEP file instead
        pass


class ParseError(ValueError):
    """The file could not be parsed; the message is the rejection reason."""


def parse(path: Path, name: str, thumb: Path | None) -> dict[str, Any]:
    """Parse one file by its content; raises ParseError (or NotCad) with the reason."""
    t0 = time.perf_counter()
    sn = sniff.sniff(path, name)
    out: dict[str, Any] = {"format": sn.format, "detail": sn.detail, "bytes": sn.size, "thumbnail": None}
    data = Path(path).read_bytes() if sn.format != "dxf" else b""
    if sn.format == "step":
        try:
            h = step_header.parse(data)
        except step_header.StepError as e:
            raise ParseError(f"{name}: not a readable ISO 10303-21 file: {e}") from e
        out["step"] = h.to_dict()
        out["declared_unit"], out["declared_unit_mm"] = h.length_unit, h.length_unit_mm
        from datalab.cad import step_geometry

        try:
            geo, shape = step_geometry.read(Path(path))
        except step_geometry.StepGeometryError as e:
            raise ParseError(f"{name}: {e}") from e
        out["geometry"] = geo.to_dict()
        out["values_unit"] = "mm"
        if thumb is not None:
            diag = float(np.linalg.norm(np.array(geo.bbox_max) - np.array(geo.bbox_min))) or 1.0
            tris = step_geometry.triangulate(shape, diag / 300.0)
            out["thumbnail"] = str(thumbnail.render_mesh(tris, thumb) or "") or None
    elif sn.format == "stl":
        try:
            st, tris = stl.read(data, binary=sn.detail == "binary")
        except stl.StlError as e:
            raise ParseError(f"{name}: not a readable {sn.detail} STL: {e}") from e
        out["stl"] = st.to_dict()
        out["declared_unit"], out["declared_unit_mm"], out["values_unit"] = None, None, None
        if thumb is not None and len(tris):
            out["thumbnail"] = str(thumbnail.render_mesh(tris, thumb) or "") or None
    else:
        try:
            st, lines = dxf.read(Path(path))
        except dxf.DxfError as e:
            raise ParseError(f"{name}: {e}") from e
        out["dxf"] = st.to_dict()
        out["declared_unit"], out["declared_unit_mm"], out["values_unit"] = st.unit, st.unit_mm, None
        if thumb is not None:
            out["thumbnail"] = str(thumbnail.render_drawing(lines, thumb, st.open_endpoints) or "") or None
    out["parse_seconds"] = round(time.perf_counter() - t0, 4)
    return out
