"""Units of measure: UCUM codes, their common spellings, and linear conversions.

Curation converts every reading to its contract's canonical unit as
``value * factor + offset``. Keeping conversions linear and in a small table
lets the curation plan do it as a join (no Python per row), which is what
lets the same plan run on the Polars GPU engine.
"""

from __future__ import annotations

import re

# Each unit: (dimension, factor, offset) to the dimension's base unit:
# base = value * factor + offset.
_UNITS: dict[str, tuple[str, float, float]] = {
    # temperature (base K)
    "K": ("temperature", 1.0, 0.0),
    "Cel": ("temperature", 1.0, 273.15),
    "[degF]": ("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    "[degR]": ("temperature", 5.0 / 9.0, 0.0),
    # pressure (base Pa)
    "Pa": ("pressure", 1.0, 0.0),
    "kPa": ("pressure", 1e3, 0.0),
    "MPa": ("pressure", 1e6, 0.0),
    "bar": ("pressure", 1e5, 0.0),
    "mbar": ("pressure", 1e2, 0.0),
    "[psi]": ("pressure", 6894.757293168361, 0.0),
    # velocity (base m/s): vibration velocity, flows of machines
    "m/s": ("velocity", 1.0, 0.0),
    "mm/s": ("velocity", 1e-3, 0.0),
    "km/h": ("velocity", 1.0 / 3.6, 0.0),
    "[in_i]/s": ("velocity", 0.0254, 0.0),
    # acceleration (base m/s2)
    "m/s2": ("acceleration", 1.0, 0.0),
    "[g]": ("acceleration", 9.80665, 0.0),
    # rotational speed (base 1/min)
    "/min": ("rotation", 1.0, 0.0),
    "Hz": ("rotation", 60.0, 0.0),
    # power (base W)
    "W": ("power", 1.0, 0.0),
    "kW": ("power", 1e3, 0.0),
    # mass flow (base kg/s)
    "kg/s": ("massflow", 1.0, 0.0),
    "[lb_av]/s": ("massflow", 0.45359237, 0.0),
    # volume flow (base L/min)
    "L/min": ("volumeflow", 1.0, 0.0),
    "m3/h": ("volumeflow", 1000.0 / 60.0, 0.0),
    # electric current
    "A": ("current", 1.0, 0.0),
    "mA": ("current", 1e-3, 0.0),
    # length (CAD and displacement)
    "m": ("length", 1.0, 0.0),
    "mm": ("length", 1e-3, 0.0),
    "um": ("length", 1e-6, 0.0),
    "[in_i]": ("length", 0.0254, 0.0),
    # dimensionless
    "1": ("dimensionless", 1.0, 0.0),
    "%": ("dimensionless", 0.01, 0.0),
    "{cycle}": ("count", 1.0, 0.0),
    "s": ("time", 1.0, 0.0),
    "h": ("time", 3600.0, 0.0),
    # voltage (DAQ channels)
    "V": ("voltage", 1.0, 0.0),
    "mV": ("voltage", 1e-3, 0.0),
}

# Spellings seen in plant data, mapped to UCUM.
ALIASES: dict[str, str] = {
    "degC": "Cel", "°C": "Cel", "C": "Cel", "celsius": "Cel",
    "degF": "[degF]", "°F": "[degF]", "F": "[degF]", "fahrenheit": "[degF]",
    "degR": "[degR]", "°R": "[degR]", "R": "[degR]", "rankine": "[degR]",
    "kelvin": "K",
    "psi": "[psi]", "psia": "[psi]",
    "rpm": "/min", "1/min": "/min",
    "in/s": "[in_i]/s", "ips": "[in_i]/s",
    "g": "[g]",
    "lbm/s": "[lb_av]/s",
    "in": "[in_i]", "inch": "[in_i]",
    "l/min": "L/min",
    "-": "1", "": "1",
    "Volts": "V", "volt": "V", "volts": "V", "hours": "h",
}


def canonical(code: str) -> str | None:
    """The UCUM code for a unit spelling, or None if the lab does not know it."""
    code = code.strip()
    if code.startswith("{") and code.endswith("}") and len(code) > 2:
        return code  # UCUM annotation: a named unit only convertible to itself
    if code in _UNITS:
        return code
    alias = ALIASES.get(code) or ALIASES.get(code.lower())
    return alias


def known(code: str) -> bool:
    return canonical(code) is not None


def conversion(src: str, dst: str) -> tuple[float, float] | None:
    """(factor, offset) with dst = src * factor + offset; None if incompatible."""
    s, d = canonical(src), canonical(dst)
    if s is None or d is None:
        return None
    if s not in _UNITS or d not in _UNITS:
        return (1.0, 0.0) if s == d else None
    sd, sf, so = _UNITS[s]
    dd, df, do = _UNITS[d]
    if sd != dd:
        return None
    # base = v*sf + so ; dst = (base - do) / df
    return sf / df, (so - do) / df


def conversion_rows(targets: set[str], extra_spellings: set[str] | None = None) -> list[dict]:
    """Rows (raw_unit, unit, factor, offset) converting every known spelling to each target.

    The curation plan joins on this table. Spellings include aliases so a
    delivery saying ``degF`` or ``°F`` is converted like ``[degF]``.
    """
    spellings = set(_UNITS) | set(ALIASES) | (extra_spellings or set())
    rows = []
    for target in sorted(targets):
        for sp in sorted(spellings):
            conv = conversion(sp, target)
            if conv is not None:
                rows.append({"raw_unit": sp, "unit": target, "factor": conv[0], "offset": conv[1]})
    return rows


# --------------------------------------------------------------------------
# durations and sizes written in contracts (``500ms``, ``10GiB``)

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")


_DURATION_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?$")


_SIZE_MULT = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, None: 1}


def parse_duration_us(text: str) -> int:
    """'1s', '500ms', '10m' -> microseconds."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"'{text}' is not a duration like 500ms, 1s, 10m, 1h or 1d")
    return int(m.group(1)) * _DURATION_US[m.group(2)]


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text).strip())
    if not m:
        raise ValueError(f"'{text}' is not a size like 512MiB or 10GiB")
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2)])

