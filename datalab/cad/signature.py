"""A geometric signature: the same part found across formats, systems and deliveries.

A part's shape, measured in the canonical unit, does not depend on whether
it was exported as a B-rep (STEP) or a mesh (STL), nor by which CAD system:
its bounding-box dimensions (sorted, so a part turned on its side still
matches), its surface area and, for closed geometry, its volume are the
same up to tessellation error. Two rows are the same part when the sorted
dimensions agree within ``DIM_TOL`` and area and volume within ``MEASURE_TOL``
(a mesh's chords make its area and volume slightly smaller than the exact
B-rep's; 2 % covers meshes exported at ordinary resolution). Drawings (DXF)
compare their two dimensions and the length of their curves.

The ``signature`` string is for people and for grouping (rounded to 4
significant digits); matching uses the tolerances, never string equality,
so values that straddle a rounding step still match. Exact duplicates are
files with the same sha256.
"""

from __future__ import annotations

from typing import Any

DIM_TOL = 0.005
MEASURE_TOL = 0.02
ABS_MM = 0.01


def dims(row: dict[str, Any]) -> list[float]:
    return sorted((float(row.get(k) or 0.0) for k in ("bbox_x_mm", "bbox_y_mm", "bbox_z_mm")), reverse=True)


def text(row: dict[str, Any]) -> str:
    d = dims(row)
    parts = ["x".join(f"{x:.4g}" for x in d)]
    if row.get("format") == "dxf":
        parts.append(f"L{float(row.get('curve_length_mm') or 0):.4g}")
    else:
        parts.append(f"A{float(row.get('area_mm2') or 0):.4g}")
        if row.get("volume_mm3") is not None:
            parts.append(f"V{float(row['volume_mm3']):.4g}")
    return ("2d:" if row.get("format") == "dxf" else "3d:") + "|".join(parts)


def _close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return True  # not measured on one side: does not contradict
    return abs(a - b) <= max(ABS_MM, rel * max(abs(a), abs(b)))


def same_part(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do two curated rows describe the same geometry (within tolerance)?"""
    if (a.get("format") == "dxf") != (b.get("format") == "dxf"):
        return False
    da, db = dims(a), dims(b)
    if max(da) <= 0 or max(db) <= 0:
        return False
    if not all(_close(x, y, DIM_TOL) for x, y in zip(da, db, strict=True)):
        return False
    if a.get("format") == "dxf":
        return _close(a.get("curve_length_mm"), b.get("curve_length_mm"), MEASURE_TOL)
    return _close(a.get("area_mm2"), b.get("area_mm2"), MEASURE_TOL) and _close(
        a.get("volume_mm3"), b.get("volume_mm3"), MEASURE_TOL)


def link(rows: list[dict[str, Any]], earlier: list[dict[str, Any]]) -> None:
    """Fill ``duplicate_of`` and ``same_part_as`` of ``rows`` (in place).

    ``earlier`` are rows already curated (other deliveries of the contract);
    rows of the same delivery are compared with each other as well. Matches
    are listed as ``<delivery_id>/<file_name>``; a duplicate points at the
    first file with the same bytes.
    """
    seen_sha: dict[str, str] = {}
    for r in earlier:
        seen_sha.setdefault(r["sha256"], f"{r['delivery_id']}/{r['file_name']}")
    for r in rows:
        ref = f"{r['delivery_id']}/{r['file_name']}"
        r["duplicate_of"] = seen_sha.get(r["sha256"])
        seen_sha.setdefault(r["sha256"], ref)
    pool = earlier + rows
    for r in rows:
        matches = [f"{o['delivery_id']}/{o['file_name']}" for o in pool
                   if o is not r and o["sha256"] != r["sha256"] and same_part(r, o)]
        r["same_part_as"] = ", ".join(sorted(set(matches))) or None
