"""A small PNG per part, rendered headless with matplotlib's Agg backend (no display, no GPU).

Meshes are drawn in an isometric view with the painter's algorithm
(triangles sorted by depth, shaded by the angle of their normal to the
light) as one 2-D ``PolyCollection``: much faster than mplot3d and
identical on every machine. Drawings are drawn as their flattened curves.
Large meshes are sampled down to ``MAX_TRIANGLES`` for the picture only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_TRIANGLES = 30_000
SIZE_PX = 256


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(SIZE_PX / 100, SIZE_PX / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_aspect("equal")
    return fig, ax


def _save(fig, out: Path) -> Path:  # type: ignore[no-untyped-def]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".png.tmp")
    fig.savefig(tmp, format="png", facecolor="white")
    tmp.replace(out)
    return out


def render_mesh(tris: np.ndarray, out: Path) -> Path | None:
    """Isometric, shaded view of triangles (n, 3, 3); None when there is nothing to draw."""
    from matplotlib.collections import PolyCollection

    tris = np.asarray(tris, dtype=np.float64)
    tris = tris[np.isfinite(tris).all(axis=(1, 2))]
    if not len(tris):
        return None
    if len(tris) > MAX_TRIANGLES:
        tris = tris[np.linspace(0, len(tris) - 1, MAX_TRIANGLES).astype(int)]
    tris = tris - tris.reshape(-1, 3).mean(axis=0)
    az, el = np.radians(45.0), np.radians(35.264)
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(el), -np.sin(el)], [0, np.sin(el), np.cos(el)]])
    # Camera looks along -y' after rotation; x' right, z' up.
    v = tris @ (rx @ rz).T
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    norm = np.linalg.norm(n, axis=1)
    n = n / np.where(norm > 0, norm, 1.0)[:, None]
    light = np.array([0.3, -0.8, 0.5])
    shade = 0.35 + 0.65 * np.abs(n @ (light / np.linalg.norm(light)))
    order = np.argsort(-v[:, :, 1].mean(axis=1))  # far first
    polys = v[order][:, :, [0, 2]]
    colours = np.clip(np.outer(shade[order], [0.55, 0.65, 0.8]), 0, 1)
    fig, ax = _figure()
    ax.add_collection(PolyCollection(list(polys), facecolors=colours, edgecolors="none"))
    lo, hi = polys.reshape(-1, 2).min(axis=0), polys.reshape(-1, 2).max(axis=0)
    pad = 0.05 * float(max(hi - lo)) or 1.0
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    return _save(fig, out)


def render_drawing(polylines: list[np.ndarray], out: Path, dangling: list[list[float]] | None = None) -> Path | None:
    """The drawing's curves; open-outline endpoints marked in red."""
    from matplotlib.collections import LineCollection

    polylines = [p for p in polylines if len(p) >= 2 and np.isfinite(p).all()]
    if not polylines:
        return None
    fig, ax = _figure()
    ax.add_collection(LineCollection(polylines, colors="#1f3b73", linewidths=1.0))
    pts = np.concatenate(polylines)
    if dangling:
        d = np.array(dangling, dtype=float)
        ax.plot(d[:, 0], d[:, 1], "o", color="#d62728", markersize=5)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = 0.05 * float(max(hi - lo)) or 1.0
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    return _save(fig, out)
