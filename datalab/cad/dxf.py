"""DXF drawings (R12 to 2018) through ezdxf: version, units, entities, layers, extents, outlines.

The version is read from the file's own ``$ACADVER`` (ezdxf upgrades R13/R14
to R2000 when it loads, which would hide what the firm delivered). Units
come from ``$INSUNITS``; 0 or absent means the drawing carries none and the
contract's unit applies. Extents are computed from the entities, not taken
from ``$EXTMIN``/``$EXTMAX``, which CAD systems often leave stale.

The outline check builds the graph of curve endpoints (lines, arcs, open
polylines, splines, elliptic arcs; endpoints merged within 1e-6 of the
drawing's size): a connected chain whose ends are not joined is an open
outline, the defect that makes a profile unusable for cutting or
extrusion. Circles and closed polylines are closed by themselves.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# $INSUNITS codes -> (name, millimetres per unit); 0 = unitless.
INSUNITS = {
    1: ("inch", 25.4), 2: ("foot", 304.8), 3: ("mile", 1_609_344.0), 4: ("mm", 1.0), 5: ("cm", 10.0),
    6: ("m", 1000.0), 7: ("km", 1e6), 8: ("microinch", 25.4e-6), 9: ("mil", 0.0254), 10: ("yard", 914.4),
    13: ("um", 1e-3), 14: ("dm", 100.0),
}
VERSIONS = {
    "AC1009": "R12", "AC1012": "R13", "AC1014": "R14", "AC1015": "R2000", "AC1018": "R2004",
    "AC1021": "R2007", "AC1024": "R2010", "AC1027": "R2013", "AC1032": "R2018",
}
_ACADVER = re.compile(rb"\$ACADVER\s*\r?\n\s*1\s*\r?\n\s*(AC\d{4})")
MAX_ENDPOINTS_SHOWN = 6


class DxfError(ValueError):
    """ezdxf could not read the drawing."""


@dataclass
class DxfStats:
    acadver: str | None = None
    version: str | None = None
    insunits: int | None = None
    unit: str | None = None
    unit_mm: float | None = None
    entities: int = 0
    entity_types: dict[str, int] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    bbox_min: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    bbox_max: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    closed_outlines: int = 0
    open_outlines: int = 0
    open_endpoints: list[list[float]] = field(default_factory=list)
    curve_length: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ends(e: Any) -> tuple[Any, Any] | None:
    """Start and end points of an open curve entity; None for closed or non-curve entities."""
    t = e.dxftype()
    if t == "LINE":
        return e.dxf.start, e.dxf.end
    if t == "ARC":
        return e.start_point, e.end_point
    if t == "LWPOLYLINE":
        if e.closed or len(e) < 2:
            return None
        pts = e.get_points("xy")
        return pts[0], pts[-1]
    if t == "POLYLINE":
        if e.is_closed:
            return None
        pts = list(e.points())
        return (pts[0], pts[-1]) if len(pts) >= 2 else None
    if t == "SPLINE":
        if e.closed:
            return None
        pts = list(e.flattening(1.0))
        return (pts[0], pts[-1]) if len(pts) >= 2 else None
    if t == "ELLIPSE":
        if abs((e.dxf.end_param - e.dxf.start_param) % (2 * np.pi)) < 1e-9:
            return None
        return e.start_point, e.end_point
    return None


def read(path: Path) -> tuple[DxfStats, list[np.ndarray]]:
    """(stats in drawing units, flattened polylines for the thumbnail). Raises DxfError."""
    import ezdxf
    from ezdxf import bbox
    from ezdxf import path as ezpath

    st = DxfStats()
    with open(path, "rb") as f:
        head = f.read(64 << 10)
    m = _ACADVER.search(head)
    st.acadver = m.group(1).decode() if m else None
    try:
        doc = ezdxf.readfile(str(path))
    except (OSError, ezdxf.DXFError, ValueError, UnicodeDecodeError) as e:
        raise DxfError(f"ezdxf cannot read the drawing: {e}") from e
    st.acadver = st.acadver or doc.dxfversion
    st.version = VERSIONS.get(st.acadver, st.acadver)
    ins = doc.header.get("$INSUNITS", 0)
    st.insunits = int(ins) if ins is not None else None
    if st.insunits in INSUNITS:
        st.unit, st.unit_mm = INSUNITS[st.insunits]
    msp = doc.modelspace()
    ents = list(msp)
    counts = Counter(e.dxftype() for e in ents)
    st.entities = len(ents)
    st.entity_types = dict(counts.most_common())
    st.layers = sorted({layer.dxf.name for layer in doc.layers})
    ext = bbox.extents(ents, fast=False)
    if ext.has_data:
        st.bbox_min = [float(x) for x in ext.extmin]
        st.bbox_max = [float(x) for x in ext.extmax]
    size = float(np.linalg.norm(np.array(st.bbox_max) - np.array(st.bbox_min))) or 1.0
    polylines: list[np.ndarray] = []
    for e in ents:
        try:
            p = ezpath.make_path(e)
        except (TypeError, ValueError):
            continue  # TEXT, DIMENSION, INSERT...: no curve of their own
        pts = np.array([(v.x, v.y) for v in p.flattening(size / 500.0)], dtype=np.float64)
        if len(pts) >= 2:
            polylines.append(pts)
            st.curve_length += float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
    _outlines(st, ents, size)
    return st, polylines


def _outlines(st: DxfStats, ents: list[Any], size: float) -> None:
    tol = size * 1e-6
    nodes: dict[tuple[int, int], int] = {}
    coords: list[tuple[float, float]] = []
    degree: Counter[int] = Counter()
    adj: dict[int, set[int]] = defaultdict(set)

    def node(p: Any) -> int:
        key = (round(float(p[0]) / tol), round(float(p[1]) / tol))
        if key not in nodes:
            nodes[key] = len(coords)
            coords.append((float(p[0]), float(p[1])))
        return nodes[key]

    closed_single = 0
    for e in ents:
        t = e.dxftype()
        if t == "CIRCLE" or (t in ("LWPOLYLINE",) and e.closed) or (t == "POLYLINE" and e.is_closed) \
                or (t == "SPLINE" and e.closed):
            closed_single += 1
            continue
        ends = _ends(e)
        if ends is None:
            if t == "ELLIPSE":
                closed_single += 1
            continue
        a, b = node(ends[0]), node(ends[1])
        degree[a] += 1
        degree[b] += 1
        adj[a].add(b)
        adj[b].add(a)
    seen: set[int] = set()
    closed, open_, dangling = 0, 0, []
    for start in list(adj):
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            n = stack.pop()
            comp.append(n)
            for x in adj[n]:
                if x not in seen:
                    seen.add(x)
                    stack.append(x)
        odd = [n for n in comp if degree[n] % 2]
        if odd:
            open_ += 1
            dangling += [n for n in odd if degree[n] == 1]
        else:
            closed += 1
    st.closed_outlines = closed + closed_single
    st.open_outlines = open_
    st.open_endpoints = [[round(coords[n][0], 6), round(coords[n][1], 6)] for n in dangling[:MAX_ENDPOINTS_SHOWN]]
