"""ISO 10303-21 (STEP) files read in pure Python: the header and the data section's facts.

Nothing here calls OpenCASCADE: this runs on any bytes and is fuzzed. It
answers what a CAD engineer asks first about a STEP file: which application
protocol (FILE_SCHEMA -> AP203 / AP214 / AP242), which system wrote it
(originating system, preprocessor), when and by whom (FILE_NAME), in which
length unit (the units the data section assigns to the geometry context),
how many entities of each type, whether PMI / tolerances are present, which
products it holds and how they are assembled (NEXT_ASSEMBLY_USAGE_OCCURRENCE).

Text that is not UTF-8 is decoded as ISO 8859-1 (every byte is valid there)
and reported in ``encoding_note``; the format's own escapes (``\\X\\``,
``\\X2\\``, ``\\X4\\``, ``\\S\\``) are decoded. A malformed file raises
``StepError`` with the record and what is wrong, never anything else.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMAS = (
    ("AP242", ("AP242", "MANAGED_MODEL_BASED_3D_ENGINEERING")),
    ("AP214", ("AUTOMOTIVE_DESIGN", "AP214")),
    ("AP203", ("CONFIG_CONTROL_DESIGN", "AP203")),
)
PMI_MARKERS = (
    "GEOMETRIC_TOLERANCE", "FLATNESS_TOLERANCE", "POSITION_TOLERANCE", "PERPENDICULARITY_TOLERANCE",
    "SURFACE_PROFILE_TOLERANCE", "CYLINDRICITY_TOLERANCE", "PARALLELISM_TOLERANCE", "TOTAL_RUNOUT_TOLERANCE",
    "DATUM", "DIMENSIONAL_SIZE", "DIMENSIONAL_LOCATION", "DIMENSIONAL_CHARACTERISTIC_REPRESENTATION",
    "PLUS_MINUS_TOLERANCE", "TOLERANCE_VALUE", "LIMITS_AND_FITS", "DRAUGHTING_MODEL",
    "ANNOTATION_PLACEHOLDER_OCCURRENCE", "TESSELLATED_ANNOTATION_OCCURRENCE", "ANNOTATION_CURVE_OCCURRENCE",
    "SHAPE_DIMENSION_REPRESENTATION",
)
SI_PREFIX = {"MILLI": 1e-3, "CENTI": 1e-2, "DECI": 1e-1, "KILO": 1e3, "MICRO": 1e-6, "NANO": 1e-9, None: 1.0}
NAMED_LENGTH = {"INCH": 25.4, "FOOT": 304.8, "MILLIMETRE": 1.0, "MILLIMETER": 1.0, "METRE": 1000.0,
                "CENTIMETRE": 10.0, "MICRON": 1e-3, "MIL": 0.0254, "YARD": 914.4}
UNIT_NAMES = {1.0: "mm", 10.0: "cm", 1000.0: "m", 25.4: "inch", 304.8: "foot", 1e-3: "um", 0.0254: "mil"}
MAX_PRODUCTS = 200
MAX_EDGES = 500


class StepError(ValueError):
    """The text is not a readable ISO 10303-21 file; the message says where."""


@dataclass
class StepHeader:
    description: list[str] = field(default_factory=list)
    implementation_level: str | None = None
    file_name: str | None = None
    timestamp: str | None = None
    authors: list[str] = field(default_factory=list)
    organizations: list[str] = field(default_factory=list)
    preprocessor: str | None = None
    originating_system: str | None = None
    authorization: str | None = None
    schemas: list[str] = field(default_factory=list)
    ap: str | None = None  # AP203 | AP214 | AP242 | None (other schema)
    encoding: str = "utf-8"
    encoding_note: str | None = None
    length_unit: str | None = None  # mm, inch, m, ... as declared; None if no unit found
    length_unit_mm: float | None = None  # millimetres per declared unit
    length_units_all: list[str] = field(default_factory=list)
    entity_count: int = 0
    entity_types: dict[str, int] = field(default_factory=dict)
    pmi_entities: int = 0
    pmi_types: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    assembly_links: int = 0  # NEXT_ASSEMBLY_USAGE_OCCURRENCE instances
    assembly_edges: list[str] = field(default_factory=list)  # "parent > child"
    problems: list[str] = field(default_factory=list)

    @property
    def is_assembly(self) -> bool:
        return self.assembly_links > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["is_assembly"] = self.is_assembly
        return d


def decode(data: bytes) -> tuple[str, str, str | None]:
    """(text, encoding, note): UTF-8 if it is, else ISO 8859-1 with a note saying where it failed."""
    try:
        return data.decode("utf-8"), "utf-8", None
    except UnicodeDecodeError as e:
        return data.decode("latin-1"), "latin-1", (
            f"not UTF-8 at byte {e.start} ({e.reason}); decoded as ISO 8859-1")


_ESC = re.compile(r"\\X2\\((?:[0-9A-Fa-f]{4})*)\\X0\\|\\X4\\((?:[0-9A-Fa-f]{8})*)\\X0\\|\\X\\([0-9A-Fa-f]{2})|\\S\\(.)|\\P[A-I]\\|\\\\", re.S)


def unescape(s: str) -> str:
    """Decode the ISO 10303-21 string escapes (control directives) of a string's content."""
    def rep(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            h = m.group(1)
            return "".join(chr(int(h[i:i + 4], 16)) for i in range(0, len(h), 4))
        if m.group(2) is not None:
            h = m.group(2)
            out = []
            for i in range(0, len(h), 8):
                cp = int(h[i:i + 8], 16)
                out.append(chr(cp) if cp <= 0x10FFFF else "\ufffd")
            return "".join(out)
        if m.group(3) is not None:
            return chr(int(m.group(3), 16))
        if m.group(4) is not None:
            return chr((ord(m.group(4)) + 128) % 0x110000)
        return "\\" if m.group(0) == "\\\\" else ""

    return _ESC.sub(rep, s.replace("''", "'")) if "\\" in s else s.replace("''", "'")


# -------------------------------------------------------------------------
# records and parameters

_TOKEN = re.compile(r"'(?:[^']|'')*'|/\*.*?\*/|[^';/]+|;|/|'", re.S)


def records(text: str) -> list[str]:
    """Split a section into records at ';' outside strings and comments."""
    out: list[str] = []
    buf: list[str] = []
    for m in _TOKEN.finditer(text):
        t = m.group()
        if t == ";":
            rec = "".join(buf).strip()
            if rec:
                out.append(rec)
            buf = []
        elif t.startswith("/*"):
            continue
        else:
            buf.append(t)
    rest = "".join(buf).strip()
    if rest:
        out.append(rest)
    return out


_PTOK = re.compile(r"\s*(?:('(?:[^']|'')*')|(#\d+)|(\.[A-Za-z_][A-Za-z0-9_]*\.)|([-+]?\d+\.?\d*(?:[eE][-+]?\d+)?)"
                   r"|([A-Za-z_][A-Za-z0-9_]*)|(\()|(\))|(,)|(\$)|(\*)|(\"[0-9A-Fa-f]*\"))", re.S)


class Typed(tuple):
    """A typed parameter NAME(args), e.g. LENGTH_MEASURE(0.01)."""


def parse_params(text: str, limit: int = 100_000) -> list[Any]:
    """Parse a parameter list '(a, b, (c, d), NAME(e))' into Python values.

    Strings -> str (unescaped), #n -> ('#', n), .ENUM. -> ('.', 'ENUM'),
    $ -> None, * -> '*', typed -> Typed((name, [args])). Raises StepError.
    """
    pos = 0
    n = len(text)
    count = 0

    def tok() -> tuple[int, str]:
        nonlocal pos, count
        count += 1
        if count > limit:
            raise StepError("parameter list too long")
        m = _PTOK.match(text, pos)
        if not m or m.end() == pos:
            raise StepError(f"unexpected character {text[pos:pos + 10]!r} at offset {pos}")
        pos = m.end()
        return m.lastindex or 0, m.group(m.lastindex or 0)

    def value(kind: int, t: str, depth: int) -> Any:
        if depth > 64:
            raise StepError("parameters nested deeper than 64 levels")
        if kind == 1:
            return unescape(t[1:-1])
        if kind == 2:
            return ("#", int(t[1:]))
        if kind == 3:
            return (".", t[1:-1].upper())
        if kind == 4:
            try:
                return float(t) if any(c in t for c in ".eE") else int(t)
            except ValueError as e:
                raise StepError(f"bad number {t!r}") from e
        if kind == 5:
            k2, _ = tok()
            if k2 != 6:
                raise StepError(f"typed parameter {t} without '('")
            return Typed((t.upper(), lst(depth + 1)))
        if kind == 6:
            return lst(depth + 1)
        if kind == 9:
            return None
        if kind == 10:
            return "*"
        if kind == 11:
            return t
        raise StepError(f"unexpected {t!r} at offset {pos}")

    def lst(depth: int) -> list[Any]:
        items: list[Any] = []
        kind, t = tok()
        if kind == 7:
            return items
        while True:
            items.append(value(kind, t, depth))
            kind, t = tok()
            if kind == 7:
                return items
            if kind != 8:
                raise StepError(f"expected ',' or ')' at offset {pos}, got {t!r}")
            kind, t = tok()

    if pos >= n:
        raise StepError("empty parameter list")
    kind, t = tok()
    if kind != 6:
        raise StepError(f"a parameter list starts with '(', got {t!r}")
    out = lst(1)
    if text[pos:].strip():
        raise StepError(f"text after the parameter list: {text[pos:pos + 20]!r}")
    return out


_SIMPLE = re.compile(r"#(\d+)\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\(.*)\Z", re.S)
_COMPLEX = re.compile(r"#(\d+)\s*=\s*\((.*)\)\s*\Z", re.S)
_INNER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def _complex_parts(body: str) -> list[tuple[str, str]]:
    """'A()B(x,y)' -> [('A', '()'), ('B', '(x,y)')], respecting strings and nesting."""
    parts = []
    pos = 0
    n = len(body)
    while pos < n:
        while pos < n and body[pos].isspace():
            pos += 1
        if pos >= n:
            break
        m = _INNER.match(body, pos)
        if not m:
            raise StepError(f"bad complex entity near {body[pos:pos + 20]!r}")
        start = m.end() - 1
        depth, i, in_str = 0, start, False
        while i < n:
            c = body[i]
            if in_str:
                if c == "'":
                    if i + 1 < n and body[i + 1] == "'":
                        i += 1
                    else:
                        in_str = False
            elif c == "'":
                in_str = True
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        if depth != 0:
            raise StepError("unbalanced parentheses in a complex entity")
        parts.append((m.group(1).upper(), body[start:i + 1]))
        pos = i + 1
    return parts


def _section(text: str, name: str, start: int = 0) -> tuple[str, int] | None:
    m = re.compile(rf"\b{name}\s*;", re.I).search(text, start)
    if not m:
        return None
    # ENDSEC outside strings: scan records until one equals ENDSEC.
    i = m.end()
    for t in _TOKEN.finditer(text, i):
        if t.group().strip().upper().startswith("ENDSEC"):
            return text[m.end():t.start()], t.end()
    raise StepError(f"the {name} section has no ENDSEC: truncated file?")


def classify_schema(schemas: list[str]) -> str | None:
    for s in schemas:
        up = s.upper()
        for ap, keys in SCHEMAS:
            if any(k in up for k in keys):
                return ap
    return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v not in ("",) else None


def _strs(v: Any) -> list[str]:
    if isinstance(v, list):
        return [x for x in v if isinstance(x, str) and x.strip()]
    return [v] if isinstance(v, str) and v.strip() else []


def parse_header(text: str, h: StepHeader) -> None:
    sec = _section(text, "HEADER")
    if sec is None:
        raise StepError("no HEADER section (an ISO 10303-21 file starts with ISO-10303-21; HEADER;)")
    for rec in records(sec[0]):
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*(\(.*)\Z", rec, re.S)
        if not m:
            h.problems.append(f"HEADER: unreadable record {rec[:60]!r}")
            continue
        name = m.group(1).upper()
        try:
            args = parse_params(m.group(2))
        except StepError as e:
            h.problems.append(f"HEADER {name}: {e}")
            continue
        if name == "FILE_DESCRIPTION":
            h.description = _strs(args[0] if args else None)
            h.implementation_level = _str(args[1]) if len(args) > 1 else None
        elif name == "FILE_NAME":
            a = args + [None] * 7
            get = a.__getitem__
            h.file_name, h.timestamp = _str(get(0)), _str(get(1))
            h.authors, h.organizations = _strs(get(2)), _strs(get(3))
            h.preprocessor, h.originating_system, h.authorization = _str(get(4)), _str(get(5)), _str(get(6))
        elif name == "FILE_SCHEMA":
            h.schemas = _strs(args[0] if args else None)
    if not h.schemas:
        h.problems.append("HEADER: no FILE_SCHEMA; the application protocol is unknown")
    h.ap = classify_schema(h.schemas)


def parse_data(text: str, h: StepHeader, start: int = 0) -> None:
    counts: Counter[str] = Counter()
    wanted: dict[int, tuple[str, str]] = {}  # id -> (type, params) for records needed later
    complex_recs: dict[int, list[tuple[str, str]]] = {}
    keep = ("PRODUCT", "PRODUCT_DEFINITION", "PRODUCT_DEFINITION_FORMATION",
            "PRODUCT_DEFINITION_FORMATION_WITH_SPECIFIED_SOURCE", "NEXT_ASSEMBLY_USAGE_OCCURRENCE",
            "LENGTH_MEASURE_WITH_UNIT")
    instances = 0
    pos = start
    sections = 0
    while (sec := _section(text, "DATA", pos)) is not None:
        body, pos = sec
        sections += 1
        for rec in records(body):
            m = _SIMPLE.match(rec)
            instances += 1
            if m:
                typ = m.group(2).upper()
                counts[typ] += 1
                if typ in keep:
                    wanted[int(m.group(1))] = (typ, m.group(3))
                continue
            m = _COMPLEX.match(rec)
            if m:
                try:
                    parts = _complex_parts(m.group(2))
                except StepError as e:
                    h.problems.append(f"DATA #{m.group(1)}: {e}")
                    continue
                for typ, _ in parts:
                    counts[typ] += 1
                names = {t for t, _ in parts}
                if names & {"LENGTH_UNIT", "GLOBAL_UNIT_ASSIGNED_CONTEXT", "LENGTH_MEASURE_WITH_UNIT"}:
                    complex_recs[int(m.group(1))] = parts
                continue
            instances -= 1
            if len(h.problems) < 20:
                h.problems.append(f"DATA: unreadable record {rec[:60]!r}")
    if sections == 0:
        raise StepError("no DATA section")
    h.entity_count = instances
    h.entity_types = dict(counts.most_common())
    pmi = {t: c for t, c in counts.items() if any(k in t for k in PMI_MARKERS)}
    h.pmi_entities = sum(pmi.values())
    h.pmi_types = sorted(pmi)
    _units(h, complex_recs, wanted)
    _products(h, wanted)


def _params(raw: str) -> list[Any] | None:
    try:
        return parse_params(raw)
    except StepError:
        return None


def _units(h: StepHeader, complex_recs: dict[int, list[tuple[str, str]]], wanted: dict[int, tuple[str, str]]) -> None:
    """Length units: those the geometry context assigns (GLOBAL_UNIT_ASSIGNED_CONTEXT), else every one found."""
    lengths: dict[int, tuple[str, float]] = {}
    for rid, parts in complex_recs.items():
        d = dict(parts)
        if "LENGTH_UNIT" not in d:
            continue
        if "SI_UNIT" in d:
            p = _params(d["SI_UNIT"]) or []
            prefix = p[0][1] if len(p) > 0 and isinstance(p[0], tuple) and p[0][0] == "." else None
            base = p[1][1] if len(p) > 1 and isinstance(p[1], tuple) else None
            if base == "METRE" and prefix in SI_PREFIX:
                mm = 1000.0 * SI_PREFIX[prefix]
                lengths[rid] = (UNIT_NAMES.get(round(mm, 9), f"{mm:g} mm"), mm)
        elif "CONVERSION_BASED_UNIT" in d:
            p = _params(d["CONVERSION_BASED_UNIT"]) or []
            name = str(p[0]).upper() if p and isinstance(p[0], str) else ""
            mm = NAMED_LENGTH.get(name)
            if mm is None and len(p) > 1 and isinstance(p[1], tuple) and p[1][0] == "#":
                mm = _measure_mm(p[1][1], complex_recs, wanted, lengths)
            if mm is not None:
                lengths[rid] = (UNIT_NAMES.get(round(mm, 9), name.lower() or f"{mm:g} mm"), mm)
    assigned: list[int] = []
    for parts in complex_recs.values():
        d = dict(parts)
        if "GLOBAL_UNIT_ASSIGNED_CONTEXT" in d:
            p = _params(d["GLOBAL_UNIT_ASSIGNED_CONTEXT"]) or []
            for ref in (p[0] if p and isinstance(p[0], list) else []):
                if isinstance(ref, tuple) and ref[0] == "#" and ref[1] in lengths:
                    assigned.append(ref[1])
    chosen = assigned or sorted(lengths)
    names = sorted({lengths[r][0] for r in chosen})
    h.length_units_all = sorted({v[0] for v in lengths.values()})
    if len(names) == 1:
        h.length_unit = names[0]
        h.length_unit_mm = lengths[chosen[0]][1]
    elif len(names) > 1:
        h.length_unit = "mixed"
        h.problems.append(f"DATA: the geometry contexts use different length units {names}")


def _measure_mm(ref: int, complex_recs: dict[int, list[tuple[str, str]]], wanted: dict[int, tuple[str, str]],
                lengths: dict[int, tuple[str, float]]) -> float | None:
    """mm per unit from LENGTH_MEASURE_WITH_UNIT(LENGTH_MEASURE(x), #si_unit)."""
    raw = wanted.get(ref, ("", ""))[1] or dict(complex_recs.get(ref, [])).get("LENGTH_MEASURE_WITH_UNIT")
    p = _params(raw) if raw else None
    if not p or len(p) < 2 or not isinstance(p[0], Typed):
        return None
    val = p[0][1][0] if p[0][1] else None
    unit = p[1][1] if isinstance(p[1], tuple) and p[1][0] == "#" else None
    if isinstance(val, (int, float)) and unit in lengths:
        return float(val) * lengths[unit][1]
    return None


def _products(h: StepHeader, wanted: dict[int, tuple[str, str]]) -> None:
    names: dict[int, str] = {}
    formation: dict[int, int] = {}
    pdef: dict[int, int] = {}
    nauo: list[tuple[int, int]] = []
    for rid, (typ, raw) in wanted.items():
        p = _params(raw)
        if p is None:
            continue
        if typ == "PRODUCT" and p:
            names[rid] = next((x for x in p[:2][::-1] if isinstance(x, str) and x), str(p[0]) if p[0] else f"#{rid}")
        elif typ.startswith("PRODUCT_DEFINITION_FORMATION") and len(p) > 2 and isinstance(p[2], tuple):
            formation[rid] = p[2][1]
        elif typ == "PRODUCT_DEFINITION" and len(p) > 2 and isinstance(p[2], tuple):
            pdef[rid] = p[2][1]
        elif typ == "NEXT_ASSEMBLY_USAGE_OCCURRENCE" and len(p) > 4 and isinstance(p[3], tuple) and isinstance(p[4], tuple):
            nauo.append((p[3][1], p[4][1]))
    h.products = sorted(set(names.values()))[:MAX_PRODUCTS]
    h.assembly_links = len(nauo)

    def pname(pd: int) -> str:
        return names.get(formation.get(pdef.get(pd, -1), -1), f"#{pd}")

    h.assembly_edges = sorted({f"{pname(a)} > {pname(b)}" for a, b in nauo})[:MAX_EDGES]


def parse(data: bytes) -> StepHeader:
    """Parse a whole STEP file's bytes. Raises StepError when it is not ISO 10303-21."""
    h = StepHeader()
    text, h.encoding, h.encoding_note = decode(data)
    head = text.lstrip("\ufeff \t\r\n")
    if not head.startswith("ISO-10303-21"):
        raise StepError("the file does not start with 'ISO-10303-21;'")
    parse_header(text, h)
    hdr_end = _section(text, "HEADER")
    parse_data(text, h, hdr_end[1] if hdr_end else 0)
    return h
