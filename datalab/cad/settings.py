"""The ``cad`` custom property of a CAD contract: what a firm delivers and how the lab treats it.

```yaml
customProperties:
  - property: kind
    value: cad
  - property: cad
    value:
      formats: [step, stl, dxf]       # what the firm may deliver (decided by content)
      canonical_unit: mm              # the unit of every length in the curated table
      unitless_unit: inch             # for STL, and DXF without $INSUNITS
      assemblies: true                # STEP assemblies (NEXT_ASSEMBLY_USAGE_OCCURRENCE) allowed
      require_closed_outlines: true   # a DXF with an open outline is rejected at push
      parse_timeout: 60s              # sandbox wall-clock limit per file
      parse_memory: 2GiB              # sandbox address-space growth per file
  - property: limits
    value: {max_file_bytes: 200MiB}
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datalab.cad.sniff import FORMATS

# Length units the lab converts, in millimetres.
LENGTH_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3, "inch": 25.4, "foot": 304.8, "mil": 0.0254,
             "yard": 914.4, "dm": 100.0, "km": 1e6, "mile": 1_609_344.0, "microinch": 25.4e-6}
KEYS = ("formats", "canonical_unit", "unitless_unit", "assemblies", "require_closed_outlines",
        "parse_timeout", "parse_memory", "workers")


@dataclass(frozen=True)
class CadSettings:
    formats: tuple[str, ...] = FORMATS
    canonical_unit: str = "mm"
    unitless_unit: str | None = None  # None: a file without units is flagged, its lengths kept as they are
    assemblies: bool = True
    require_closed_outlines: bool = False
    parse_timeout_s: float = 60.0
    parse_memory_bytes: int = 2 << 30
    workers: int | None = None

    @property
    def canonical_mm(self) -> float:
        return LENGTH_MM[self.canonical_unit]


def lint(value: Any, where: str) -> list[str]:
    """Every problem of the ``cad`` property, with its path."""
    from datalab.contracts.units import parse_duration_us, parse_size

    if value is None:
        return [f"{where}: a CAD contract needs a 'cad' custom property (formats, canonical_unit, ...)"]
    if not isinstance(value, dict):
        return [f"{where}: must be a mapping"]
    p = [f"{where}.{k}: unknown key (allowed: {', '.join(KEYS)})" for k in sorted(set(value) - set(KEYS))]
    fmts = value.get("formats")
    if not isinstance(fmts, list) or not fmts:
        p.append(f"{where}.formats: required, a non-empty list of {list(FORMATS)}")
    else:
        p += [f"{where}.formats[{i}]: {f!r} is not one of {list(FORMATS)}" for i, f in enumerate(fmts) if f not in FORMATS]
    for key in ("canonical_unit", "unitless_unit"):
        u = value.get(key, "mm" if key == "canonical_unit" else None)
        if u is not None and u not in LENGTH_MM:
            p.append(f"{where}.{key}: {u!r} is not a length unit the lab knows ({', '.join(LENGTH_MM)})")
    for key in ("assemblies", "require_closed_outlines"):
        if key in value and not isinstance(value[key], bool):
            p.append(f"{where}.{key}: must be true or false")
    if "parse_timeout" in value:
        try:
            parse_duration_us(value["parse_timeout"])
        except ValueError as e:
            p.append(f"{where}.parse_timeout: {e}")
    if "parse_memory" in value:
        try:
            parse_size(value["parse_memory"])
        except ValueError as e:
            p.append(f"{where}.parse_memory: {e}")
    w = value.get("workers")
    if w is not None and (not isinstance(w, int) or w < 1):
        p.append(f"{where}.workers: a positive integer")
    return p


def build(value: dict[str, Any] | None) -> CadSettings:
    from datalab.contracts.units import parse_duration_us, parse_size

    v = value or {}
    return CadSettings(
        formats=tuple(v.get("formats") or FORMATS),
        canonical_unit=v.get("canonical_unit", "mm"),
        unitless_unit=v.get("unitless_unit"),
        assemblies=bool(v.get("assemblies", True)),
        require_closed_outlines=bool(v.get("require_closed_outlines", False)),
        parse_timeout_s=parse_duration_us(v["parse_timeout"]) / 1e6 if v.get("parse_timeout") else 60.0,
        parse_memory_bytes=parse_size(v["parse_memory"]) if v.get("parse_memory") else 2 << 30,
        workers=v.get("workers"),
    )
