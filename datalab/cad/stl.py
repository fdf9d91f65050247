"""STL meshes, ASCII (several solids per file) and binary: counts, closure, volume, area.

A mesh is closed (watertight) when, after welding vertices that coincide
within a tolerance (1e-6 of the bounding-box diagonal, so float32 noise
from the exporter does not open a seam), every edge is shared by exactly two
triangles. The volume is then exact for the mesh by the divergence theorem
(sum of signed tetrahedra); for an open mesh it is reported as ``None``,
since any number would be made up. Degenerate triangles (zero area) and
zero normals are counted, not repaired: they are what the firm delivered.
STL carries no unit; the caller applies the contract's.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_BIN = np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)), ("attr", "<u2")])
_SOLID = re.compile(rb"^[ \t]*solid\b[ \t]*([^\r\n]*)", re.M | re.I)
_ENDSOLID = re.compile(rb"^[ \t]*endsolid\b", re.M | re.I)
_VERTEX = re.compile(rb"vertex\s+(\S+)\s+(\S+)\s+(\S+)", re.I)
_NORMAL = re.compile(rb"facet\s+normal\s+(\S+)\s+(\S+)\s+(\S+)", re.I)


class StlError(ValueError):
    """The bytes are not a readable STL; the message says where."""


@dataclass
class StlStats:
    encoding: str  # ascii | binary
    header: str = ""
    solids: int = 1
    solid_names: list[str] = field(default_factory=list)
    triangles: int = 0
    vertices_welded: int = 0
    closed: bool = False
    open_edges: int = 0
    nonmanifold_edges: int = 0
    degenerate_triangles: int = 0
    zero_normals: int = 0
    area: float = 0.0
    volume: float | None = None
    bbox_min: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    bbox_max: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_binary(data: bytes) -> tuple[StlStats, np.ndarray, np.ndarray]:
    if len(data) < 84:
        raise StlError(f"binary STL needs at least 84 bytes, got {len(data)}")
    (n,) = struct.unpack_from("<I", data, 80)
    if len(data) != 84 + 50 * n:
        raise StlError(f"binary STL declares {n:,} triangles ({84 + 50 * n:,} bytes) but has {len(data):,} bytes")
    arr = np.frombuffer(data, dtype=_BIN, count=n, offset=84)
    header = data[:80].split(b"\0", 1)[0].decode("latin-1", "replace").strip()
    st = StlStats(encoding="binary", header=header)
    return st, arr["v"].astype(np.float64), arr["n"].astype(np.float64)


def _floats(groups: list[tuple[bytes, ...]], what: str, solid: int) -> np.ndarray:
    try:
        return np.array([[float(x) for x in g] for g in groups], dtype=np.float64).reshape(-1, 3)
    except ValueError as e:
        raise StlError(f"solid {solid}: a {what} has a coordinate that is not a number ({e})") from e


def read_ascii(data: bytes) -> tuple[StlStats, np.ndarray, np.ndarray]:
    starts = [m for m in _SOLID.finditer(data)]
    if not starts:
        raise StlError("ASCII STL without 'solid'")
    st = StlStats(encoding="ascii", solids=0)
    tris, norms = [], []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(data)
        body = data[m.end():end]
        if not _ENDSOLID.search(body):
            raise StlError(f"solid {i + 1} ({m.group(1).decode('latin-1').strip()!r}) has no 'endsolid': truncated file?")
        v = _floats(_VERTEX.findall(body), "vertex", i + 1)
        nn = _floats(_NORMAL.findall(body), "facet normal", i + 1)
        if len(v) % 3 or len(v) // 3 != len(nn):
            raise StlError(f"solid {i + 1}: {len(nn)} facets but {len(v)} vertices (expected 3 a facet)")
        tris.append(v.reshape(-1, 3, 3))
        norms.append(nn)
        st.solids += 1
        st.solid_names.append(m.group(1).decode("latin-1", "replace").strip()[:80])
    return st, np.concatenate(tris) if tris else np.zeros((0, 3, 3)), np.concatenate(norms) if norms else np.zeros((0, 3))


def measure(st: StlStats, tris: np.ndarray, normals: np.ndarray) -> StlStats:
    """Fill the geometric counts of ``st`` from triangles (n, 3, 3) and declared normals (n, 3)."""
    st.triangles = len(tris)
    if not len(tris):
        return st
    finite = np.isfinite(tris).all(axis=(1, 2))
    st.nonfinite = int((~finite).sum())
    tris = tris[finite]
    normals = normals[finite]
    if not len(tris):
        return st
    st.zero_normals = int((np.linalg.norm(normals, axis=1) < 1e-12).sum())
    lo, hi = tris.reshape(-1, 3).min(axis=0), tris.reshape(-1, 3).max(axis=0)
    st.bbox_min, st.bbox_max = [float(x) for x in lo], [float(x) for x in hi]
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    areas = 0.5 * np.linalg.norm(cross, axis=1)
    st.area = float(areas.sum())
    diag = float(np.linalg.norm(hi - lo)) or 1.0
    degenerate = areas <= (diag * 1e-9) ** 2
    st.degenerate_triangles = int(degenerate.sum())
    good = tris[~degenerate]
    # Weld: quantise to a grid of diag * 1e-6, then index unique points.
    q = np.round(good.reshape(-1, 3) / (diag * 1e-6)).astype(np.int64)
    _, idx = np.unique(q, axis=0, return_inverse=True)
    idx = idx.reshape(-1, 3)
    st.vertices_welded = int(idx.max() + 1) if idx.size else 0
    e = np.concatenate([idx[:, [0, 1]], idx[:, [1, 2]], idx[:, [2, 0]]])
    e.sort(axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    st.open_edges = int((counts == 1).sum())
    st.nonmanifold_edges = int((counts > 2).sum())
    st.closed = st.open_edges == 0 and st.nonmanifold_edges == 0 and len(good) >= 4
    if st.closed:
        vol = float(np.einsum("ij,ij->i", good[:, 0], np.cross(good[:, 1], good[:, 2])).sum() / 6.0)
        st.volume = abs(vol)
    return st


def read(data: bytes, binary: bool) -> tuple[StlStats, np.ndarray]:
    """Parse and measure; returns (stats, triangles) with triangles in file units."""
    st, tris, normals = read_binary(data) if binary else read_ascii(data)
    measure(st, tris, normals)
    return st, tris.astype(np.float32)
