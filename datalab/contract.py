"""Data contracts: ODCS v3 documents and what the lab reads from them.

A contract is an ODCS v3 YAML file parsed with the ``open-data-contract-
standard`` model. The lab's own terms live in ODCS ``customProperties``:

* contract level: ``kind`` (timeseries | cad), ``layout`` (how a delivered
  file maps to the schema), ``curation`` (sampling interval, gap and outlier
  settings), ``sovereignty`` (the policy), ``limits`` (file sizes);
* property level: ``role`` (entity | time | measurement | attribute),
  ``unit`` (canonical UCUM unit), ``source_unit`` (unit the file carries, for
  wide layouts), ``personal`` (pseudonymise before publishing).

Loading checks everything at once (YAML, the ODCS JSON schema, then the
lab's rules) and either returns a whole ``Contract`` or raises
``ContractError`` listing every problem with its field path: an invalid
contract never loads half-way.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from datalab import units
from datalab.errors import ContractError
from datalab.policy import CLASSIFICATIONS, COUNTRIES, REGIONS, Policy

KINDS = ("timeseries", "cad")
ROLES = ("entity", "time", "measurement", "attribute")
SHAPES = ("long", "wide", "matrix")
LOGICAL_TYPES = ("string", "number", "integer", "timestamp", "date", "boolean")
QUALITY_METRICS = ("rowCount", "nullValues", "missingValues", "invalidValues", "duplicateValues")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
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


@dataclass(frozen=True)
class Column:
    """One schema property, as the lab uses it."""

    name: str
    source_name: str  # name in the delivered file (ODCS physicalName), or the sensor name
    logical_type: str
    role: str
    required: bool = False
    unique: bool = False
    primary_key: bool = False
    unit: str | None = None  # canonical unit (measurements)
    source_unit: str | None = None  # unit in the file when the layout carries none
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    enum: tuple[Any, ...] | None = None
    classification: str | None = None
    personal: bool = False
    quality: tuple[dict[str, Any], ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Layout:
    """How a delivered file maps onto the contract's schema."""

    shape: str = "long"
    header: bool = True
    delimiter: str | None = None  # None: sniff; "whitespace": runs of blanks
    encoding: str = "utf-8"
    columns: tuple[str, ...] = ()  # file column order, for header-less files
    sensor_column: str = "sensor"
    value_column: str = "value"
    unit_column: str | None = "unit"
    timezone: str = "UTC"  # zone of naive timestamps
    timestamp_format: str | None = None
    # matrix shape: one file per sensor, one row per cycle, samples as columns
    sensor_from_filename: str | None = None
    samples_per_row: int | None = None
    sample_rate_hz: float | None = None
    row_attribute: str | None = None  # attribute column holding the 1-based row number
    entity_value: str | None = None  # constant entity when the file has none
    # measurement files (MATLAB, HDF5, TDMS, MDF 4, Parquet by channel map): datalab.measurement.spec
    format: str | None = None
    measurement: Any = None  # datalab.measurement.spec.MeasurementLayout when ``format`` is set


@dataclass(frozen=True)
class Curation:
    """Settings of the curation plan that the contract may tune."""

    # Expected step between readings of one sensor: microseconds for a
    # timestamp time column, index units (cycles, seconds) for an integer one.
    expected_step: int | None = None
    gap_factor: float = 3.0
    outlier_mad: float = 8.0
    resample_us: int | None = None


@dataclass(frozen=True)
class Contract:
    """A loaded, checked contract."""

    id: str
    version: str
    status: str
    tenant: str
    name: str
    kind: str
    product: str
    path: Path
    columns: tuple[Column, ...]
    layout: Layout
    curation: Curation
    policy: Policy
    quality: tuple[dict[str, Any], ...] = ()
    sla: tuple[dict[str, Any], ...] = ()
    max_file_bytes: int = 20 << 30
    description: str = ""
    cad: Any = None  # datalab.cad.settings.CadSettings for kind 'cad'
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def slug(self) -> str:
        """A short name safe for paths and Dagster keys: tenant__product."""
        return f"{self.tenant}__{self.product}".replace("-", "_")

    @property
    def entity(self) -> Column:
        return next(c for c in self.columns if c.role == "entity")

    @property
    def time(self) -> Column:
        return next(c for c in self.columns if c.role == "time")

    @property
    def measurements(self) -> list[Column]:
        return [c for c in self.columns if c.role == "measurement"]

    @property
    def attributes(self) -> list[Column]:
        return [c for c in self.columns if c.role == "attribute"]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


# --------------------------------------------------------------------------
# loading and linting


@lru_cache(maxsize=1)
def _odcs_validator() -> Any:
    import jsonschema
    from open_data_contract_standard.model import OpenDataContractStandard

    schema = json.loads(OpenDataContractStandard.json_schema())
    return jsonschema.Draft201909Validator(schema)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _custom(props: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {p.get("property"): p.get("value") for p in (props or []) if isinstance(p, dict)}


def _custom_index(props: list[dict[str, Any]] | None, name: str) -> int | None:
    for i, p in enumerate(props or []):
        if isinstance(p, dict) and p.get("property") == name:
            return i
    return None


def read_yaml(path: Path) -> tuple[Any, list[str]]:
    """Parse YAML; a syntax error becomes a problem with its line and column."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [f"byte {e.start}: the file is not UTF-8 ({e.reason})"]
    except OSError as e:
        return None, [f"cannot read the file: {e.strerror}"]
    try:
        return yaml.safe_load(text), []
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, [f"{where}invalid YAML: {getattr(e, 'problem', None) or e}"]


def lint_document(doc: Any) -> list[str]:
    """Every problem of a parsed contract document, each with its field path."""
    if not isinstance(doc, dict):
        return ["(document): a contract must be a YAML mapping (ODCS v3 DataContract)"]
    schema_errors = sorted(_odcs_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    problems = _one_per_mistake(schema_errors, _lint_lab_rules(doc))
    if not problems:
        from open_data_contract_standard.model import OpenDataContractStandard

        try:
            OpenDataContractStandard(**doc)
        except Exception as e:  # pydantic ValidationError: keep its locations
            for err in getattr(e, "errors", lambda: [])():
                problems.append(f"{_path(err['loc'])}: {err['msg']}")
    return problems


_COMBINATORS = frozenset({"oneOf", "anyOf", "allOf", "if", "then", "else", "not"})


def _field(problem: str) -> str:
    """The field path of a problem line, without the lab's " (name)" notes: ``a[0] (x).b: msg`` -> ``a[0].b``."""
    return re.sub(r" \([^)]*\)", "", problem.split(": ", 1)[0])


def _one_per_mistake(schema_errors: list[Any], lab: list[str]) -> list[str]:
    """Merge the ODCS JSON-schema pass with the lab's own pass: one problem per mistake.

    Both passes look at the same fields, so one wrong value was reported twice
    (``version: 1.0 is not of type 'string'`` and ``version: must be a semantic
    version``). The lab's message names the rule and what to write instead, so
    where both report a field, the lab's wins; the schema's other messages about
    one field are dropped after the first, and a combinator failure (``oneOf``
    ...) above a field the lab already reports is the same mistake seen from
    its parent.
    """
    lab_fields = {_field(p) for p in lab}
    seen: set[str] = set()
    out: list[str] = []
    for e in schema_errors:
        path = _path(e.absolute_path)
        below = any(f.startswith(path + ".") or f.startswith(path + "[") for f in lab_fields)
        if path in lab_fields or path in seen or (below and e.validator in _COMBINATORS):
            continue
        seen.add(path)
        out.append(f"{path}: {e.message}")
    return out + lab


def _lint_lab_rules(doc: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if doc.get("kind") != "DataContract":
        p.append("kind: must be 'DataContract'")
    if not str(doc.get("apiVersion", "")).startswith("v3"):
        p.append(f"apiVersion: datalab reads ODCS v3 contracts, got {doc.get('apiVersion')!r}")
    tenant = doc.get("tenant")
    if not isinstance(tenant, str) or not _SLUG.match(tenant):
        p.append("tenant: required, the member firm's id (lower-case letters, digits, '-')"
                 + (f"; got {tenant!r}" if tenant is not None else ""))
    if not re.match(r"^\d+\.\d+\.\d+$", str(doc.get("version", ""))):
        p.append(f"version: must be a semantic version like 1.0.0, got {doc.get('version')!r}")
    if doc.get("status") not in ("draft", "active", "deprecated", "retired", "proposed"):
        p.append(f"status: must be one of draft, proposed, active, deprecated, retired; got {doc.get('status')!r}")
    cps = doc.get("customProperties") or []
    custom = _custom(cps)
    kind = custom.get("kind", "timeseries")
    if kind not in KINDS:
        p.append(f"customProperties[{_custom_index(cps, 'kind')}].value: kind must be one of {KINDS}, got {kind!r}")
    product = doc.get("dataProduct")
    if not isinstance(product, str) or not _SLUG.match(product):
        p.append("dataProduct: required, the product's short name (lower-case letters, digits, '-')")
    sov_i = _custom_index(cps, "sovereignty")
    if sov_i is None:
        p.append("customProperties: a 'sovereignty' property is required (residency, purposes, ...)")
    else:
        p += _lint_policy(custom["sovereignty"], f"customProperties[{sov_i}].value")
    schema = doc.get("schema")
    if not isinstance(schema, list) or len(schema) != 1:
        p.append("schema: a datalab contract describes exactly one schema object (the delivered record)")
        return p
    props = schema[0].get("properties") if isinstance(schema[0], dict) else None
    if not isinstance(props, list) or not props:
        p.append("schema[0].properties: at least one property is required")
        return p
    if kind == "timeseries":
        p += _lint_timeseries(props, custom, cps)
    elif kind == "cad":
        from datalab.cad.settings import lint as lint_cad

        cad_i = _custom_index(cps, "cad")
        p += lint_cad(custom.get("cad"), f"customProperties[{cad_i}].value" if cad_i is not None else "customProperties.cad")
    for i, q in enumerate(schema[0].get("quality") or []):
        p += _lint_quality(q, f"schema[0].quality[{i}]", [x.get("name") for x in props if isinstance(x, dict)])
    if "limits" in custom:
        try:
            parse_size((custom["limits"] or {}).get("max_file_bytes", 0))
        except (ValueError, AttributeError) as e:
            p.append(f"customProperties[{_custom_index(cps, 'limits')}].value.max_file_bytes: {e}")
    return p


def _lint_policy(pol: Any, where: str) -> list[str]:
    p: list[str] = []
    if not isinstance(pol, dict):
        return [f"{where}: the sovereignty policy must be a mapping"]
    unknown = set(pol) - {
        "residency", "purposes", "prohibited_purposes", "classification", "license",
        "retention_until", "personal_data", "export_control",
    }
    for k in sorted(unknown):
        p.append(f"{where}.{k}: unknown policy field (allowed: residency, purposes, prohibited_purposes, classification, license, retention_until, personal_data, export_control)")
    res = pol.get("residency")
    if not isinstance(res, list) or not res:
        p.append(f"{where}.residency: required, a non-empty list of ISO 3166 country codes, EU or EEA")
    else:
        for i, code in enumerate(res):
            if code not in COUNTRIES and code not in REGIONS:
                p.append(f"{where}.residency[{i}]: unknown region {code!r} (ISO 3166 alpha-2, EU or EEA)")
    purposes = pol.get("purposes")
    if not isinstance(purposes, list) or not purposes:
        p.append(f"{where}.purposes: required, a non-empty list of allowed purposes")
    for key in ("purposes", "prohibited_purposes"):
        for i, x in enumerate(pol.get(key) or []):
            if not isinstance(x, str) or not re.match(r"^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*$", x):
                p.append(f"{where}.{key}[{i}]: {x!r} is not a purpose name (lower-case words with '-', parts joined by '.')")
    p += _lint_purpose_words(pol, where)
    overlap = set(pol.get("purposes") or []) & set(pol.get("prohibited_purposes") or [])
    if overlap:
        p.append(f"{where}: purposes {sorted(overlap)} are both allowed and prohibited")
    if pol.get("classification", "internal") not in CLASSIFICATIONS:
        p.append(f"{where}.classification: must be one of {list(CLASSIFICATIONS)}")
    ret = pol.get("retention_until")
    if ret is not None and not isinstance(ret, dt.date):
        try:
            dt.date.fromisoformat(str(ret))
        except ValueError:
            p.append(f"{where}.retention_until: {ret!r} is not a date (YYYY-MM-DD)")
    for key in ("personal_data", "export_control"):
        if key in pol and not isinstance(pol[key], bool):
            p.append(f"{where}.{key}: must be true or false")
    return p


def _lint_purpose_words(pol: dict[str, Any], where: str) -> list[str]:
    """Purposes must be words of the lab's vocabulary (datalab.purposes)."""
    from datalab import purposes as vocab

    try:
        v = vocab.load()
    except ContractError as e:
        return [f"{where}: {e}"]
    out: list[str] = []
    for key in ("purposes", "prohibited_purposes"):
        words = pol.get(key) or []
        out += v.problems(list(words) if isinstance(words, list) else [], f"{where}.{key}")
    return out


def _lint_quality(q: Any, where: str, names: list[str]) -> list[str]:
    if not isinstance(q, dict):
        return [f"{where}: a quality rule must be a mapping"]
    if q.get("type", "library") not in ("library", "custom", "text"):
        return []
    if q.get("type") == "custom":
        if q.get("engine") != "great-expectations" or not isinstance(q.get("implementation"), dict):
            return [f"{where}: a custom rule needs engine: great-expectations and an implementation mapping (expectation type and kwargs)"]
        return []
    if q.get("type") == "text":
        return []
    metric = q.get("metric") or q.get("rule")
    if metric not in QUALITY_METRICS:
        return [f"{where}.metric: {metric!r} is not supported (use one of {list(QUALITY_METRICS)})"]
    ops = [k for k in q if k.startswith("must")]
    if len(ops) != 1:
        return [f"{where}: give exactly one of mustBe, mustBeLessThan, mustBeLessOrEqualTo, mustBeGreaterThan, mustBeGreaterOrEqualTo, mustBeBetween"]
    if q.get("unit", "rows") not in ("rows", "percent"):
        return [f"{where}.unit: must be rows or percent"]
    return []


def _lint_timeseries(props: list[Any], custom: dict[str, Any], cps: list[Any]) -> list[str]:
    p: list[str] = []
    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for i, prop in enumerate(props):
        where = f"schema[0].properties[{i}]"
        if not isinstance(prop, dict) or not prop.get("name"):
            p.append(f"{where}: a property needs a name")
            continue
        name = prop["name"]
        where = f"{where} ({name})"
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", name):
            p.append(f"{where}.name: {name!r} must be an identifier (letters, digits, '_')")
        lt = prop.get("logicalType")
        if lt not in LOGICAL_TYPES:
            p.append(f"{where}.logicalType: {lt!r} is not supported for time series (use {list(LOGICAL_TYPES)})")
        pc = _custom(prop.get("customProperties"))
        role = pc.get("role") or ("measurement" if lt in ("number", "integer") else "attribute")
        if role not in ROLES:
            p.append(f"{where}.customProperties.role: {role!r} must be one of {list(ROLES)}")
            continue
        roles[role].append(name)
        opts = prop.get("logicalTypeOptions") or {}
        if role == "measurement":
            if lt not in ("number", "integer"):
                p.append(f"{where}.logicalType: a measurement must be number or integer")
            unit = pc.get("unit")
            if unit is None:
                p.append(f"{where}.customProperties: a measurement needs a 'unit' (UCUM code, e.g. Cel, bar, mm/s, 1)")
            elif not units.known(str(unit)):
                p.append(f"{where}.customProperties.unit: {unit!r} is not a unit the lab knows")
            src = pc.get("source_unit")
            if src is not None and unit is not None and units.conversion(str(src), str(unit)) is None:
                p.append(f"{where}.customProperties.source_unit: cannot convert {src!r} to {unit!r}")
        if role == "time" and lt not in ("timestamp", "integer", "number"):
            p.append(f"{where}.logicalType: the time column must be a timestamp or an integer index")
        lo, hi = opts.get("minimum"), opts.get("maximum")
        for k, v in (("minimum", lo), ("maximum", hi)):
            if v is not None and not isinstance(v, (int, float)):
                p.append(f"{where}.logicalTypeOptions.{k}: must be a number, got {v!r}")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
            p.append(f"{where}.logicalTypeOptions: minimum {lo} is greater than maximum {hi}")
        pat = opts.get("pattern")
        if pat is not None:
            try:
                re.compile(pat)
            except re.error as e:
                p.append(f"{where}.logicalTypeOptions.pattern: not a regular expression ({e})")
        for j, q in enumerate(prop.get("quality") or []):
            p += _lint_quality(q, f"{where}.quality[{j}]", [name])
    for role in ("entity", "time"):
        if len(roles[role]) != 1:
            p.append(f"schema[0].properties: a time-series contract needs exactly one '{role}' column (role: {role}), found {roles[role] or 'none'}")
    if not roles["measurement"]:
        p.append("schema[0].properties: a time-series contract needs at least one measurement")
    lay_i = _custom_index(cps, "layout")
    lay = custom.get("layout") or {}
    where = f"customProperties[{lay_i}].value" if lay_i is not None else "customProperties.layout"
    if not isinstance(lay, dict):
        return [*p, f"{where}: layout must be a mapping"]
    if lay.get("format") is not None:
        from datalab.measurement.spec import lint as lint_measurement

        p += lint_measurement(lay, props, where)
        lay = {"shape": "measurement", "timezone": lay.get("timezone", "UTC")}
    shape = lay.get("shape", "long")
    if shape not in (*SHAPES, "measurement"):
        p.append(f"{where}.shape: must be one of {list(SHAPES)}")
    if lay.get("header") is False and shape == "wide" and not lay.get("columns"):
        p.append(f"{where}.columns: a header-less wide file needs the list of its columns in order")
    names = {x.get("name") for x in props if isinstance(x, dict)}
    for i, col in enumerate(lay.get("columns") or []):
        if col not in names and shape == "wide":
            p.append(f"{where}.columns[{i}]: {col!r} is not a property of the schema")
    if shape == "matrix":
        for k in ("sensor_from_filename", "samples_per_row", "sample_rate_hz"):
            if not lay.get(k):
                p.append(f"{where}.{k}: required for the matrix shape")
        rx = lay.get("sensor_from_filename")
        if rx:
            try:
                if "sensor" not in re.compile(rx).groupindex:
                    p.append(f"{where}.sensor_from_filename: needs a named group (?P<sensor>...)")
            except re.error as e:
                p.append(f"{where}.sensor_from_filename: not a regular expression ({e})")
    tz = lay.get("timezone", "UTC")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(tz)
    except Exception:
        p.append(f"{where}.timezone: unknown time zone {tz!r}")
    cur_i = _custom_index(cps, "curation")
    cur = custom.get("curation") or {}
    for k in ("sampling_interval", "resample"):
        if cur.get(k) is not None and not (k == "sampling_interval" and isinstance(cur[k], int)):
            try:
                parse_duration_us(cur[k])
            except ValueError as e:
                p.append(f"customProperties[{cur_i}].value.{k}: {e}")
    return p


def _build(doc: dict[str, Any], path: Path) -> Contract:
    cps = doc.get("customProperties") or []
    custom = _custom(cps)
    obj = doc["schema"][0]
    lay = dict(custom.get("layout") or {})
    columns = []
    for prop in obj["properties"]:
        pc = _custom(prop.get("customProperties"))
        lt = prop.get("logicalType", "string")
        role = pc.get("role") or ("measurement" if lt in ("number", "integer") else "attribute")
        opts = prop.get("logicalTypeOptions") or {}
        enum = prop.get("enum")
        if enum is not None:
            enum = tuple(e.get("value") if isinstance(e, dict) else e for e in enum)
        columns.append(
            Column(
                name=prop["name"],
                source_name=prop.get("physicalName") or prop["name"],
                logical_type=lt,
                role=role,
                required=bool(prop.get("required")),
                unique=bool(prop.get("unique")),
                primary_key=bool(prop.get("primaryKey")),
                unit=units.canonical(str(pc["unit"])) if pc.get("unit") is not None else None,
                source_unit=units.canonical(str(pc["source_unit"])) if pc.get("source_unit") else None,
                minimum=opts.get("minimum"),
                maximum=opts.get("maximum"),
                pattern=opts.get("pattern"),
                enum=enum,
                classification=prop.get("classification"),
                personal=bool(pc.get("personal", False)),
                quality=tuple(prop.get("quality") or ()),
                description=prop.get("description") or "",
            )
        )
    delim = lay.get("delimiter")
    layout = Layout(
        shape=lay.get("shape", "long"),
        header=bool(lay.get("header", True)),
        delimiter={"\\t": "\t", "tab": "\t", "space": "whitespace"}.get(delim, delim),
        encoding=lay.get("encoding", "utf-8"),
        columns=tuple(lay.get("columns") or ()),
        sensor_column=lay.get("sensor_column", "sensor"),
        value_column=lay.get("value_column", "value"),
        unit_column=lay.get("unit_column", "unit"),
        timezone=lay.get("timezone", "UTC"),
        timestamp_format=lay.get("timestamp_format"),
        sensor_from_filename=lay.get("sensor_from_filename"),
        samples_per_row=lay.get("samples_per_row"),
        sample_rate_hz=lay.get("sample_rate_hz"),
        row_attribute=lay.get("row_attribute"),
        entity_value=lay.get("entity_value"),
        format=lay.get("format"),
        measurement=_measurement(lay) if lay.get("format") is not None else None,
    )
    cur = custom.get("curation") or {}
    curation = Curation(
        expected_step=(
            cur["sampling_interval"] if isinstance(cur.get("sampling_interval"), int)
            else parse_duration_us(cur["sampling_interval"]) if cur.get("sampling_interval") else None
        ),
        gap_factor=float(cur.get("gap_factor", 3.0)),
        outlier_mad=float(cur.get("outlier_mad", 8.0)),
        resample_us=parse_duration_us(cur["resample"]) if cur.get("resample") else None,
    )
    desc = doc.get("description") or {}
    limits = custom.get("limits") or {}
    return Contract(
        id=doc["id"],
        version=str(doc["version"]),
        status=doc["status"],
        tenant=doc["tenant"],
        name=doc.get("name") or doc["id"],
        kind=custom.get("kind", "timeseries"),
        product=doc["dataProduct"],
        path=path,
        columns=tuple(columns),
        layout=layout,
        curation=curation,
        policy=Policy.from_dict(custom["sovereignty"], source=doc["id"]),
        quality=tuple(obj.get("quality") or ()),
        sla=tuple(doc.get("slaProperties") or ()),
        max_file_bytes=parse_size(limits.get("max_file_bytes", 20 << 30)),
        description=(desc.get("purpose") or "") if isinstance(desc, dict) else str(desc),
        cad=_cad_settings(custom) if custom.get("kind") == "cad" else None,
        raw=doc,
    )


def _measurement(lay: dict[str, Any]) -> Any:
    from datalab.measurement.spec import build

    return build(lay)


def _cad_settings(custom: dict[str, Any]) -> Any:
    from datalab.cad.settings import build

    return build(custom.get("cad"))


def lint(path: Path) -> list[str]:
    """All problems of the contract at ``path`` (empty list: it is valid)."""
    doc, problems = read_yaml(path)
    return problems or lint_document(doc)


def load(path: Path) -> Contract:
    """Load one contract, or raise ContractError listing every problem."""
    path = Path(path)
    doc, problems = read_yaml(path)
    problems = problems or lint_document(doc)
    if problems:
        raise ContractError(str(path), problems)
    return _build(doc, path)


def load_all(contracts_dir: Path) -> dict[str, Contract]:
    """Every provider contract under ``contracts_dir/providers``, by id.

    Raises if any is invalid, or if two share an id, or if a contract sits in
    another tenant's folder (the folder is the firm's area).
    """
    out: dict[str, Contract] = {}
    problems: list[str] = []
    for path in sorted((Path(contracts_dir) / "providers").glob("*/*.yaml")):
        try:
            c = load(path)
        except ContractError as e:
            problems += [f"{path.name}: {x}" for x in e.problems]
            continue
        if path.parent.name != c.tenant:
            problems.append(f"{path}: tenant {c.tenant!r} does not match its folder {path.parent.name!r}")
        if c.id in out:
            problems.append(f"{path}: id {c.id!r} is also used by {out[c.id].path}")
        out[c.id] = c
    if problems:
        raise ContractError(str(contracts_dir), problems)
    return out


def find(contracts: dict[str, Contract], ref: str) -> Contract:
    """Find a contract by id, file path, file stem or tenant/product."""
    if ref in contracts:
        return contracts[ref]
    for c in contracts.values():
        if ref in (str(c.path), c.path.stem, f"{c.tenant}/{c.product}", c.slug) or Path(ref).resolve() == c.path.resolve():
            return c
    from datalab.errors import NotFound

    raise NotFound(f"no contract {ref!r}; known: {', '.join(sorted(c.path.stem for c in contracts.values()))}")
