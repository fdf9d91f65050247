"""Exact B-rep geometry of a STEP file through OpenCASCADE (``OCP``, cadquery-ocp-novtk).

OpenCASCADE's STEP translator converts every length to millimetres while it
transfers the file (its ``xstep.cascade.unit`` default), whatever unit the
file declares; the numbers here are therefore in mm, and the header parser
reports the declared unit beside them. Volume and area are exact integrals
over the B-rep (``BRepGProp``), not over a mesh. Topology is counted as OCC
sees it after transfer (distinct sub-shapes, orientation ignored): a closed
periodic edge of the file may become two, so edge counts can exceed the
file's EDGE_CURVE count.

Only ever called inside the sandbox (``datalab.cad.sandbox``): this is the
large C++ code base that hostile input must not reach in the lab's process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class StepGeometryError(ValueError):
    """OpenCASCADE could not read or transfer the file."""


@dataclass
class StepGeometry:
    roots: int = 0
    solids: int = 0
    shells: int = 0
    faces: int = 0
    edges: int = 0
    vertices: int = 0
    closed_solids: int = 0
    volume_mm3: float | None = None
    area_mm2: float = 0.0
    bbox_min: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    bbox_max: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    transfer_messages: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _distinct(shape: Any, kind: Any) -> list[Any]:
    from OCP.TopExp import TopExp_Explorer

    ex = TopExp_Explorer(shape, kind)
    seen: dict[int, Any] = {}
    while ex.More():
        cur = ex.Current()
        # hash() is OCC's shape hasher (TShape + location, not orientation),
        # the same identity as TopTools_IndexedMapOfShape.
        seen.setdefault(hash(cur), cur)
        ex.Next()
    return list(seen.values())


def read(path: Path) -> tuple[StepGeometry, Any]:
    """(geometry in mm, the OCC shape) of a STEP file. Raises StepGeometryError."""
    from OCP.Bnd import Bnd_Box
    from OCP.BRepBndLib import BRepBndLib
    from OCP.BRepCheck import BRepCheck_Analyzer
    from OCP.BRepGProp import BRepGProp
    from OCP.GProp import GProp_GProps
    from OCP.IFSelect import IFSelect_RetDone
    from OCP.STEPControl import STEPControl_Reader
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_SHELL, TopAbs_SOLID, TopAbs_VERTEX

    reader = STEPControl_Reader()
    status = reader.ReadFile(str(path))
    if status != IFSelect_RetDone:
        raise StepGeometryError(f"OpenCASCADE could not read the file (IFSelect status {int(status)})")
    g = StepGeometry()
    g.roots = reader.NbRootsForTransfer()
    reader.TransferRoots()
    shape = reader.OneShape()
    if shape is None or shape.IsNull():
        raise StepGeometryError("OpenCASCADE transferred no shape (no geometry in the file)")
    solids = _distinct(shape, TopAbs_SOLID)
    g.solids = len(solids)
    g.shells = len(_distinct(shape, TopAbs_SHELL))
    g.faces = len(_distinct(shape, TopAbs_FACE))
    g.edges = len(_distinct(shape, TopAbs_EDGE))
    g.vertices = len(_distinct(shape, TopAbs_VERTEX))
    if g.faces == 0:
        raise StepGeometryError("the file holds no faces (no solid or surface geometry)")
    props = GProp_GProps()
    BRepGProp.SurfaceProperties_s(shape, props)
    g.area_mm2 = float(props.Mass())
    if solids:
        g.closed_solids = sum(1 for s in solids if BRepCheck_Analyzer(s).IsValid())
        vol = 0.0
        for s in solids:
            vp = GProp_GProps()
            BRepGProp.VolumeProperties_s(s, vp)
            vol += abs(float(vp.Mass()))
        g.volume_mm3 = vol
    box = Bnd_Box()
    BRepBndLib.AddOptimal_s(shape, box, False, False)
    lo, hi = box.CornerMin(), box.CornerMax()
    g.bbox_min = [round(lo.X(), 6), round(lo.Y(), 6), round(lo.Z(), 6)]
    g.bbox_max = [round(hi.X(), 6), round(hi.Y(), 6), round(hi.Z(), 6)]
    return g, shape


def triangulate(shape: Any, deflection_mm: float) -> np.ndarray:
    """Triangles (n, 3, 3) of the shape's faces, meshed with BRepMesh_IncrementalMesh (for thumbnails)."""
    from OCP.BRep import BRep_Tool
    from OCP.BRepMesh import BRepMesh_IncrementalMesh
    from OCP.TopAbs import TopAbs_FACE, TopAbs_REVERSED
    from OCP.TopLoc import TopLoc_Location
    from OCP.TopoDS import TopoDS

    BRepMesh_IncrementalMesh(shape, deflection_mm, False, 0.5, True)
    out = []
    for shp in _distinct(shape, TopAbs_FACE):
        face = TopoDS.Face(shp)
        loc = TopLoc_Location()
        tri = BRep_Tool.Triangulation_s(face, loc)
        if tri is None:
            continue
        trsf = loc.Transformation()
        pts = np.array([[p.X(), p.Y(), p.Z()] for p in (tri.Node(i).Transformed(trsf) for i in range(1, tri.NbNodes() + 1))])
        rev = face.Orientation() == TopAbs_REVERSED
        for i in range(1, tri.NbTriangles() + 1):
            a, b, c = tri.Triangle(i).Get()
            out.append(pts[[a - 1, c - 1, b - 1] if rev else [a - 1, b - 1, c - 1]])
    return np.array(out, dtype=np.float32).reshape(-1, 3, 3)
