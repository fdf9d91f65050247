"""One row per CAD file: what the sandbox measured, in the contract's canonical length unit.

The parse result (``datalab.cad.worker``) is in the file's own units; here
the declared unit (STEP's units, DXF's $INSUNITS) or, for files that carry
none (STL, unitless DXF), the contract's ``unitless_unit`` is applied, and
every length, area and volume is converted. Where the unit came from is
kept (``unit_source``: file | contract | unknown) because a unit taken
from the contract is an assumption the ML team should be able to see.
Quality problems become words in ``flags``; they are kept, never repaired.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import polars as pl

from datalab.cad.settings import LENGTH_MM, CadSettings

EXTENSIONS = {".step": "step", ".stp": "step", ".p21": "step", ".stl": "stl", ".dxf": "dxf"}

SCHEMA: dict[str, pl.DataType] = {
    "delivery_id": pl.String(), "file_name": pl.String(), "sha256": pl.String(), "bytes": pl.Int64(),
    "format": pl.String(), "format_detail": pl.String(), "name_format": pl.String(),
    "schema": pl.String(), "schema_name": pl.String(), "originating_system": pl.String(),
    "preprocessor": pl.String(), "authors": pl.String(), "organizations": pl.String(),
    "file_timestamp": pl.String(), "header_encoding": pl.String(), "products": pl.String(),
    "is_assembly": pl.Boolean(), "assembly_links": pl.Int64(), "entity_count": pl.Int64(), "pmi_entities": pl.Int64(),
    "declared_unit": pl.String(), "unit_source": pl.String(), "length_unit": pl.String(),
    "canonical_unit": pl.String(), "unit_scale": pl.Float64(),
    "solids": pl.Int64(), "faces": pl.Int64(), "edges": pl.Int64(), "triangles": pl.Int64(),
    "dxf_entities": pl.Int64(), "layers": pl.String(), "entity_types": pl.String(), "geometry_items": pl.Int64(),
    "closed": pl.Boolean(), "volume_mm3": pl.Float64(), "area_mm2": pl.Float64(),
    "bbox_x_mm": pl.Float64(), "bbox_y_mm": pl.Float64(), "bbox_z_mm": pl.Float64(),
    "bbox_volume_mm3": pl.Float64(), "volume_to_bbox": pl.Float64(), "curve_length_mm": pl.Float64(),
    "open_edges": pl.Int64(), "nonmanifold_edges": pl.Int64(), "degenerate_triangles": pl.Int64(),
    "zero_normals": pl.Int64(), "closed_outlines": pl.Int64(), "open_outlines": pl.Int64(),
    "signature": pl.String(), "duplicate_of": pl.String(), "same_part_as": pl.String(),
    "thumbnail": pl.String(), "flags": pl.String(), "classification": pl.String(),
    "export_control": pl.Boolean(), "parse_seconds": pl.Float64(),
}


def name_format(name: str) -> str | None:
    """The format a file's name claims (None for an extension the lab does not know)."""
    return EXTENSIONS.get(PurePosixPath(name).suffix.lower())


def resolve_unit(parsed: dict[str, Any], cad: CadSettings) -> tuple[str | None, str, float]:
    """(length unit of the file's values, where it came from, factor to canonical)."""
    declared = parsed.get("declared_unit")
    if parsed.get("values_unit") == "mm":
        # OpenCASCADE already converted to mm; the declared unit is information only.
        unit = declared if declared in LENGTH_MM else ("mm" if declared is None else None)
        source = "file" if declared in LENGTH_MM else "unknown"
        return unit, source, 1.0 / cad.canonical_mm
    if declared in LENGTH_MM:
        return declared, "file", LENGTH_MM[declared] / cad.canonical_mm
    if cad.unitless_unit:
        return cad.unitless_unit, "contract", LENGTH_MM[cad.unitless_unit] / cad.canonical_mm
    return None, "unknown", 1.0


@dataclass(frozen=True)
class Measured:
    """What one format's parse result puts in the row: its columns, its flags, its bounding box corners (file units)."""

    fields: dict[str, Any]
    flags: list[str]
    lo: list[float] | None = None
    hi: list[float] | None = None


def row(parsed: dict[str, Any], cad: CadSettings, *, delivery_id: str, file_name: str, sha256: str,
        classification: str, export_control: bool, thumbnail: str | None) -> dict[str, Any]:
    """The curated row of one parsed file (duplicate and same-part links are filled by ``signature.link``).

    The steps: the columns every file has (``_file_fields``), the unit and
    name flags, the format's own columns and flags (``measure_step``,
    ``measure_stl``, ``measure_dxf``, in the canonical unit), the bounding
    box, and the signature of the finished row.
    """
    fmt = parsed["format"]
    unit, source, k = resolve_unit(parsed, cad)
    r: dict[str, Any] = dict.fromkeys(SCHEMA)
    r.update(delivery_id=delivery_id, file_name=file_name, sha256=sha256, bytes=int(parsed["bytes"]), format=fmt,
             format_detail=parsed["detail"], name_format=name_format(file_name), declared_unit=parsed.get("declared_unit"),
             unit_source=source, length_unit=unit, canonical_unit=cad.canonical_unit, unit_scale=k,
             classification=classification, export_control=export_control, thumbnail=thumbnail,
             parse_seconds=parsed.get("parse_seconds"))
    flags = _unit_flags(source, r["name_format"], fmt)
    m = MEASURES.get(fmt, measure_dxf)(parsed, k)
    r.update(m.fields)
    flags += m.flags
    if m.lo is not None and m.hi is not None:
        r.update(bbox_fields(fmt, m.lo, m.hi, k, r["volume_mm3"]))
    if r["export_control"]:
        flags.append("export_controlled")
    r["flags"] = ",".join(flags)
    from datalab.cad import signature

    r["signature"] = signature.text(r)
    return r


def _unit_flags(source: str, claimed: str | None, fmt: str) -> list[str]:
    """Flags of assumptions the ML team should see: a unit taken from the contract or unknown, a name that lies."""
    flags: list[str] = []
    if source == "contract":
        flags.append("unit_from_contract")
    if source == "unknown":
        flags.append("unit_unknown")
    if claimed is not None and claimed != fmt:
        flags.append("name_format_mismatch")
    return flags


def measure_step(parsed: dict[str, Any], k: float) -> Measured:
    """A STEP file: its header (schema, system, authors, assembly, PMI) and its B-rep geometry (solids, faces)."""
    h, g = parsed["step"], parsed["geometry"]
    fields = dict(
        schema=h["ap"], schema_name=", ".join(h["schemas"])[:500] or None,
        originating_system=h["originating_system"], preprocessor=h["preprocessor"],
        authors=", ".join(h["authors"]) or None, organizations=", ".join(h["organizations"]) or None,
        file_timestamp=h["timestamp"], header_encoding=h["encoding"], products=", ".join(h["products"]) or None,
        is_assembly=h["is_assembly"], assembly_links=h["assembly_links"], entity_count=h["entity_count"],
        pmi_entities=h["pmi_entities"], solids=g["solids"], faces=g["faces"], edges=g["edges"],
        geometry_items=g["faces"], closed=g["solids"] > 0 and g["closed_solids"] == g["solids"],
        area_mm2=g["area_mm2"] * k * k,
        volume_mm3=g["volume_mm3"] * k ** 3 if g["volume_mm3"] is not None and g["solids"] else None,
        entity_types=json.dumps(dict(list(h["entity_types"].items())[:40])))
    flags = [f for f, bad in (("header_not_utf8", h["encoding"] != "utf-8"),
                              ("header_problems", bool(h["problems"])),
                              ("assembly", bool(h["is_assembly"])),
                              ("pmi", bool(h["pmi_entities"]))) if bad]
    if g["solids"] == 0:
        flags.append("no_solid")
    elif g["closed_solids"] < g["solids"]:
        flags.append("invalid_solid")
    return Measured(fields, flags, g["bbox_min"], g["bbox_max"])


def measure_stl(parsed: dict[str, Any], k: float) -> Measured:
    """An STL mesh: triangles, closedness and the mesh defects (open, non-manifold, degenerate, zero normals)."""
    st = parsed["stl"]
    fields = dict(
        schema=f"stl-{st['encoding']}", triangles=st["triangles"], geometry_items=st["triangles"],
        closed=st["closed"], area_mm2=st["area"] * k * k,
        volume_mm3=st["volume"] * k ** 3 if st["volume"] is not None else None,
        open_edges=st["open_edges"], nonmanifold_edges=st["nonmanifold_edges"],
        degenerate_triangles=st["degenerate_triangles"], zero_normals=st["zero_normals"],
        products=", ".join(n for n in st["solid_names"] if n) or None, solids=st["solids"])
    flags = [f for f, bad in (("open_mesh", not st["closed"] and st["triangles"] > 0),
                              ("nonmanifold_edges", st["nonmanifold_edges"] > 0),
                              ("degenerate_triangles", st["degenerate_triangles"] > 0),
                              ("zero_normals", st["zero_normals"] > 0),
                              ("empty", st["triangles"] == 0)) if bad]
    return Measured(fields, flags, st["bbox_min"], st["bbox_max"])


def measure_dxf(parsed: dict[str, Any], k: float) -> Measured:
    """A DXF drawing: entities, layers, outlines closed and open, curve length."""
    d = parsed["dxf"]
    fields = dict(
        schema=d["version"], schema_name=d["acadver"], dxf_entities=d["entities"], geometry_items=d["entities"],
        layers=", ".join(d["layers"]), entity_types=json.dumps(d["entity_types"]),
        closed_outlines=d["closed_outlines"], open_outlines=d["open_outlines"],
        curve_length_mm=d["curve_length"] * k, closed=d["open_outlines"] == 0 and d["closed_outlines"] > 0)
    flags = [f for f, bad in (("open_outline", bool(d["open_outlines"])), ("empty", d["entities"] == 0)) if bad]
    return Measured(fields, flags, d["bbox_min"], d["bbox_max"])


# Each format's measure; a format not named here is measured as a drawing (as row always did).
MEASURES = {"step": measure_step, "stl": measure_stl, "dxf": measure_dxf}


def bbox_fields(fmt: str, lo: list[float], hi: list[float], k: float, volume_mm3: float | None) -> dict[str, Any]:
    """The bounding box's extents in the canonical unit and, for solids and meshes, its volume and fill ratio.

    A drawing's box has no volume to compare (it is flat or has no solid).
    """
    ext = [max(0.0, (b - a) * k) for a, b in zip(lo, hi, strict=True)]
    out: dict[str, Any] = {"bbox_x_mm": ext[0], "bbox_y_mm": ext[1], "bbox_z_mm": ext[2]}
    if fmt != "dxf":
        bv = ext[0] * ext[1] * ext[2]
        out["bbox_volume_mm3"] = bv
        if volume_mm3 is not None and bv > 0:
            out["volume_to_bbox"] = volume_mm3 / bv
    return out


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
