"""Data contracts: ODCS v3 documents and what the lab reads from them.

A contract is an ODCS v3 YAML file parsed with the ``open-data-contract-
standard`` model. The lab's own terms live in ODCS ``customProperties``:

* contract level: ``kind`` (a registered kind: ``datalab.kinds``), ``layout`` (how a delivered
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
import difflib
import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from datalab.contracts import units
from datalab.contracts.policy import CLASSIFICATIONS, COUNTRIES, REGIONS, Policy
from datalab.contracts.units import parse_duration_us, parse_size
from datalab.contracts.yamlfile import read_yaml
from datalab.errors import ContractError
from datalab.kinds import sections as kind_sections

ROLES = ("entity", "time", "measurement", "attribute")
SHAPES = ("long", "wide", "matrix")
LOGICAL_TYPES = ("string", "number", "integer", "timestamp", "date", "boolean")
QUALITY_METRICS = ("rowCount", "nullValues", "missingValues", "invalidValues", "duplicateValues")
# Keys each lab section honours; any other key is a lint error with its path
# (a misspelt ``delimter`` used to be ignored and the file sniffed instead).
LAYOUT_KEYS = (
    "shape", "header", "delimiter", "encoding", "columns", "sensor_column", "value_column", "unit_column",
    "timezone", "timestamp_format", "sensor_from_filename", "samples_per_row", "sample_rate_hz",
    "row_attribute", "entity_value", "start", "format",
)
CURATION_KEYS = ("sampling_interval", "gap_factor", "outlier_mad", "resample", "max_duplicate_share")
LOGICAL_TYPE_OPTION_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern")
QUALITY_ARGUMENTS = ("missingValues", "validValues")
# Units an integer time axis may count in (matrix layouts place samples on it).
TIME_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
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
    # logicalTypeOptions.exclusiveMinimum/Maximum: the bound itself is out of range
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    # quality invalidValues arguments.validValues: the allowed values (an expectation)
    valid_values: tuple[Any, ...] | None = None
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
    start: str | None = None  # matrix with a timestamp time column: time of the first sample (ISO 8601), default 1970-01-01Z
    time_tick_us: int = 1_000_000  # matrix: microseconds per step of the time axis (contract.matrix_tick_us)
    # measurement files (MATLAB, HDF5, TDMS, MDF 4, Parquet by channel map): datalab.contracts.measurement
    format: str | None = None
    measurement: Any = None  # datalab.contracts.measurement.MeasurementLayout when ``format`` is set


@dataclass(frozen=True)
class Curation:
    """Settings of the curation plan that the contract may tune."""

    # Expected step between readings of one sensor: microseconds for a
    # timestamp time column, index units (cycles, seconds) for an integer one.
    expected_step: int | None = None
    gap_factor: float = 3.0
    outlier_mad: float = 8.0
    resample_us: int | None = None
    # Share of a delivery's rows that may repeat a key (entity, time, sensor)
    # of an earlier row of the same delivery; past it the receipt, the
    # curation stats and the card say so and the suite fails
    # (``lab_max_duplicate_share``). A layout that gives many readings one
    # time (the matrix rounding of issue 23) shows up here, not as silent loss.
    max_duplicate_share: float = 0.05


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
    section: Any = None  # the kind's own section, as its parser built it (datalab.kinds.sections)
    # Tokens that mean "no reading" in this firm's files (contract-level
    # customProperty ``missingValues`` plus the ``arguments.missingValues`` of
    # missingValues quality rules): such a value is missing, not a number.
    missing_values: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def missing_numbers(self) -> list[float]:
        """The missing-value tokens that are numbers (``-999``): compared as numbers by curation."""
        return sorted({float(t) for t in self.missing_values if _is_number(t)})

    @property
    def missing_words(self) -> list[str]:
        """The missing-value tokens that are not numbers (``NA``): read as null by the readers."""
        return [t for t in self.missing_values if not _is_number(t)]

    @property
    def series(self) -> bool:
        """The kind's record is a series with roles (entity, time, measurements): readers, curation, samples, streams."""
        return kind_sections.get(self.kind).columns

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
    kind = custom.get("kind", kind_sections.DEFAULT)
    known = kind_sections.names()
    if kind not in known:
        p.append(f"customProperties[{_custom_index(cps, 'kind')}].value: kind must be one of {known}, got {kind!r}")
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
    section = kind_sections.get(kind) if kind in known else kind_sections.Section()
    if section.columns:
        p += _lint_columns(props, custom, cps)
    if section.key is not None and section.lint is not None:
        sec_i = _custom_index(cps, section.key)
        p += section.lint(custom.get(section.key),
                          f"customProperties[{sec_i}].value" if sec_i is not None else f"customProperties.{section.key}")
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
    """Purposes must be words of the lab's vocabulary (datalab.contracts.purposes)."""
    from datalab.contracts import purposes as vocab

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
    return _lint_arguments(q, metric, where)


def _quality_list(q: dict[str, Any], key: str) -> Any:
    """``key`` of a quality rule, top level (ODCS 3.0) or under ``arguments`` (ODCS 3.1)."""
    args = q.get("arguments")
    if isinstance(args, dict) and key in args:
        return args[key]
    return q.get(key)


def _lint_arguments(q: dict[str, Any], metric: str, where: str) -> list[str]:
    """The value lists a library rule carries: honoured (missingValues, validValues) or an error."""
    p: list[str] = []
    args = q.get("arguments")
    if args is not None and not isinstance(args, dict):
        return [f"{where}.arguments: must be a mapping"]
    for k in sorted(set(args or {}) - set(QUALITY_ARGUMENTS)):
        p.append(f"{where}.arguments.{k}: unknown argument (the lab reads {list(QUALITY_ARGUMENTS)})")
    for key, allowed in (("missingValues", "missingValues"), ("validValues", "invalidValues")):
        v = _quality_list(q, key)
        if v is None:
            continue
        at = f"{where}.arguments.{key}" if isinstance(args, dict) and key in args else f"{where}.{key}"
        if metric != allowed:
            p.append(f"{at}: only a {allowed} rule takes {key} (this rule's metric is {metric})")
        elif not isinstance(v, list) or not v or not all(isinstance(x, (str, int, float, bool)) or x is None for x in v):
            p.append(f"{at}: must be a non-empty list of values")
    return p


def _missing_tokens(values: Any) -> tuple[str, ...]:
    """Sentinels as the text a file carries them in ('-999' for -999; null and '' are missing anyway)."""
    out: list[str] = []
    for v in values or ():
        if v is None or isinstance(v, bool):
            continue
        t = format(v, "g") if isinstance(v, float) else str(v)
        if t.strip() and t not in out:
            out.append(t.strip())
    return tuple(out)


def _lint_columns(props: list[Any], custom: dict[str, Any], cps: list[Any]) -> list[str]:
    """The rules of a kind whose contracts describe columns (time series), one function per rule.

    The order of the problems is the order people read them in (and tests
    compare): each property from first to last, then the roles the schema
    must hold, the contract's missing values, the layout and the curation
    settings. A layout or curation that is not a mapping ends the lint there,
    with that one problem: the rules after it read the section's keys.
    """
    p: list[str] = []
    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for i, prop in enumerate(props):
        role, problems = _lint_property(prop, f"schema[0].properties[{i}]")
        p += problems
        if role is not None:
            roles[role].append(prop["name"])
    p += _lint_roles(roles)
    p += _lint_missing_values(custom, cps)
    lay_i = _custom_index(cps, "layout")
    lay = custom.get("layout") or {}
    where = f"customProperties[{lay_i}].value" if lay_i is not None else "customProperties.layout"
    if not isinstance(lay, dict):
        return [*p, f"{where}: layout must be a mapping"]
    if lay.get("format") is not None:
        from datalab.contracts.measurement import lint as lint_measurement

        p += lint_measurement(lay, props, where)
        # a measurement file (TDMS, MDF4 ...) says its own layout: only the time zone is the contract's
        lay = {"shape": "measurement", "timezone": lay.get("timezone", "UTC")}
    p += _lint_layout(lay, props, where)
    cur_i = _custom_index(cps, "curation")
    cur = custom.get("curation") or {}
    cw = f"customProperties[{cur_i}].value"
    if not isinstance(cur, dict):
        return [*p, f"{cw}: curation must be a mapping"]
    return p + _lint_curation(cur, lay, props, cw)


# --------------------------------------------------------------------------
# the schema's properties


def _lint_property(prop: Any, where: str) -> tuple[str | None, list[str]]:
    """One schema property: its role (None when it has none the lab knows) and its problems.

    A property without a name or with an unknown role stops here: every
    later rule depends on what the role makes of the column.
    """
    if not isinstance(prop, dict) or not prop.get("name"):
        return None, [f"{where}: a property needs a name"]
    name = prop["name"]
    where = f"{where} ({name})"
    p: list[str] = []
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", name):
        p.append(f"{where}.name: {name!r} must be an identifier (letters, digits, '_')")
    lt = prop.get("logicalType")
    if lt not in LOGICAL_TYPES:
        p.append(f"{where}.logicalType: {lt!r} is not supported for time series (use {list(LOGICAL_TYPES)})")
    pc = _custom(prop.get("customProperties"))
    role = pc.get("role") or ("measurement" if lt in ("number", "integer") else "attribute")
    if role not in ROLES:
        p.append(f"{where}.customProperties.role: {role!r} must be one of {list(ROLES)}")
        return None, p
    opts = prop.get("logicalTypeOptions") or {}
    if role == "measurement":
        p += _lint_measurement_column(lt, pc, where)
    if role == "time" and lt not in ("timestamp", "integer", "number"):
        p.append(f"{where}.logicalType: the time column must be a timestamp or an integer index")
    p += _lint_type_options(opts, lt, role, where)
    for j, q in enumerate(prop.get("quality") or []):
        p += _lint_quality(q, f"{where}.quality[{j}]", [name])
    return role, p


def _lint_measurement_column(lt: Any, pc: dict[str, Any], where: str) -> list[str]:
    """A measurement is a number with a unit the lab knows: curation converts and compares readings by it."""
    p: list[str] = []
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
    return p


def _lint_type_options(opts: Any, lt: Any, role: str, where: str) -> list[str]:
    """``logicalTypeOptions``: only the keys the lab honours, as the suite will check them."""
    p: list[str] = []
    if not isinstance(opts, dict):
        p.append(f"{where}.logicalTypeOptions: must be a mapping")
        opts = {}
    for k in sorted(set(opts) - set(LOGICAL_TYPE_OPTION_KEYS)):
        p.append(f"{where}.logicalTypeOptions.{k}: not honoured by the lab (it reads {list(LOGICAL_TYPE_OPTION_KEYS)})")
    p += _lint_bounds(opts, lt, role, where)
    p += _lint_bound_order(opts, where)
    pat = opts.get("pattern")
    if pat is not None:
        try:
            re.compile(pat)
        except re.error as e:
            p.append(f"{where}.logicalTypeOptions.pattern: not a regular expression ({e})")
    return p


def _lint_bounds(opts: dict[str, Any], lt: Any, role: str, where: str) -> list[str]:
    """Each bound is a number, on a property whose values are numbers (an integer time index counts)."""
    p: list[str] = []
    for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        v = opts.get(k)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            p.append(f"{where}.logicalTypeOptions.{k}: must be a number, got {v!r}")
        # An unknown logicalType is its own mistake, reported once on that field.
        elif v is not None and lt in LOGICAL_TYPES and lt not in ("number", "integer") \
                and not (role == "time" and lt != "timestamp"):
            p.append(f"{where}.logicalTypeOptions.{k}: a bound needs a number or integer property (this one is {lt})")
    return p


def _lint_bound_order(opts: dict[str, Any], where: str) -> list[str]:
    """The lower bound is not above the upper one: such a range would reject every reading."""
    lows = [(v, k) for k in ("minimum", "exclusiveMinimum") if isinstance(v := opts.get(k), (int, float))]
    highs = [(v, k) for k in ("maximum", "exclusiveMaximum") if isinstance(v := opts.get(k), (int, float))]
    if lows and highs and max(lows)[0] > min(highs)[0]:
        (lo, lk), (hi, hk) = max(lows), min(highs)
        return [f"{where}.logicalTypeOptions: {lk} {lo} is greater than {hk} {hi}"]
    return []


def _lint_roles(roles: dict[str, list[str]]) -> list[str]:
    """A series is keyed by one entity and one time column, and carries at least one measurement."""
    p: list[str] = []
    for role in ("entity", "time"):
        if len(roles[role]) != 1:
            p.append(f"schema[0].properties: a time-series contract needs exactly one '{role}' column (role: {role}), found {roles[role] or 'none'}")
    if not roles["measurement"]:
        p.append("schema[0].properties: a time-series contract needs at least one measurement")
    return p


def _lint_missing_values(custom: dict[str, Any], cps: list[Any]) -> list[str]:
    """The contract-level ``missingValues``: a list of the tokens a file writes for no reading."""
    mv_i = _custom_index(cps, "missingValues")
    if mv_i is None:
        return []
    mv = custom.get("missingValues")
    if not isinstance(mv, list) or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in mv):
        return [f"customProperties[{mv_i}].value: missingValues must be a list of the tokens that mean no reading (e.g. [-999, 'NA'])"]
    return []


# --------------------------------------------------------------------------
# the layout: how a delivered file maps to the schema


def _lint_layout(lay: dict[str, Any], props: list[Any], where: str) -> list[str]:
    """The layout's rules in order: its shape and keys, a header-less file's columns, the matrix, the time zone."""
    p: list[str] = []
    shape = lay.get("shape", "long")
    if shape not in (*SHAPES, "measurement"):
        p.append(f"{where}.shape: must be one of {list(SHAPES)}")
    if shape != "measurement":
        p += _lint_layout_keys(lay, where)
    p += _lint_layout_columns(lay, shape, props, where)
    if shape == "matrix":
        p += _lint_matrix(lay, props, where)
    tz = lay.get("timezone", "UTC")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(tz)
    except Exception:
        p.append(f"{where}.timezone: unknown time zone {tz!r}")
    return p


def _lint_layout_keys(lay: dict[str, Any], where: str) -> list[str]:
    """Only the keys the lab reads, and a delimiter it can use.

    A misspelt key (``delimter``) used to be ignored and the file sniffed
    instead; the hint names the key that was probably meant.
    """
    p: list[str] = []
    for k in sorted(set(lay) - set(LAYOUT_KEYS), key=str):
        near = difflib.get_close_matches(str(k), LAYOUT_KEYS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        if str(k) in ("null_values", "na_values", "missing_values"):
            hint = "tokens that mean no reading go in the contract-level customProperty 'missingValues'; "
        p.append(f"{where}.{k}: unknown layout key, the lab would ignore it ({hint}allowed: {', '.join(LAYOUT_KEYS)})")
    delim = lay.get("delimiter")
    if delim is not None and (not isinstance(delim, str) or (len(delim) != 1 and delim not in ("\\t", "tab", "space", "whitespace"))):
        p.append(f"{where}.delimiter: {delim!r} must be one character, 'tab', 'space' or 'whitespace'")
    return p


def _lint_layout_columns(lay: dict[str, Any], shape: Any, props: list[Any], where: str) -> list[str]:
    """``columns``: a header-less file has only these names, so the key columns must be among them."""
    p: list[str] = []
    if shape in ("long", "wide") and lay.get("header") is False and lay.get("columns"):
        by_role = {prop.get("name"): (_custom(prop.get("customProperties")).get("role"), prop.get("physicalName"))
                   for prop in props if isinstance(prop, dict)}
        cols = set(map(str, lay.get("columns") or []))
        for nm, (role, phys) in by_role.items():
            if role in ("entity", "time") and nm not in cols and phys not in cols:
                p.append(f"{where}.columns: the {role} column {nm!r} is not among the file's columns {list(lay['columns'])} (a header-less file has only these)")
    if lay.get("header") is False and shape == "wide" and not lay.get("columns"):
        p.append(f"{where}.columns: a header-less wide file needs the list of its columns in order")
    names = {x.get("name") for x in props if isinstance(x, dict)}
    for i, col in enumerate(lay.get("columns") or []):
        if col not in names and shape == "wide":
            p.append(f"{where}.columns[{i}]: {col!r} is not a property of the schema")
    return p


def _lint_matrix(lay: dict[str, Any], props: list[Any], where: str) -> list[str]:
    """A matrix file holds one sensor's samples, many per row: the layout says which sensor, how many, how fast."""
    p: list[str] = []
    for k in ("sensor_from_filename", "samples_per_row", "sample_rate_hz"):
        if not lay.get(k):
            p.append(f"{where}.{k}: required for the matrix shape")
    p += _lint_matrix_time(lay, props, where)
    if lay.get("start") is not None:
        try:
            dt.datetime.fromisoformat(str(lay["start"]))
        except ValueError:
            p.append(f"{where}.start: {lay['start']!r} is not an ISO 8601 time")
    rx = lay.get("sensor_from_filename")
    if rx:
        try:
            if "sensor" not in re.compile(rx).groupindex:
                p.append(f"{where}.sensor_from_filename: needs a named group (?P<sensor>...)")
        except re.error as e:
            p.append(f"{where}.sensor_from_filename: not a regular expression ({e})")
    return p


# --------------------------------------------------------------------------
# curation: sampling, gaps, outliers, duplicates


def _lint_curation(cur: dict[str, Any], lay: dict[str, Any], props: list[Any], cw: str) -> list[str]:
    """The curation settings: known keys, numbers in range, an interval the layout agrees with, durations."""
    p: list[str] = []
    for k in sorted(set(cur) - set(CURATION_KEYS), key=str):
        near = difflib.get_close_matches(str(k), CURATION_KEYS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        p.append(f"{cw}.{k}: unknown curation key, the lab would ignore it ({hint}allowed: {', '.join(CURATION_KEYS)})")
    p += _lint_curation_numbers(cur, cw)
    p += _lint_matrix_interval(lay, props, cur, cw)
    for k in ("sampling_interval", "resample"):
        # an integer sampling_interval counts steps of an integer time axis, not a duration
        if cur.get(k) is not None and not (k == "sampling_interval" and isinstance(cur[k], int)):
            try:
                parse_duration_us(cur[k])
            except ValueError as e:
                p.append(f"{cw}.{k}: {e}")
    return p


def _lint_curation_numbers(cur: dict[str, Any], cw: str) -> list[str]:
    """Gap factor and outlier threshold are positive; the duplicate share is a share (0 allowed: none)."""
    p: list[str] = []
    for k, lo_ok in (("gap_factor", False), ("outlier_mad", False), ("max_duplicate_share", True)):
        v = cur.get(k)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (v == 0 and not lo_ok):
            p.append(f"{cw}.{k}: must be a number {'>= 0' if lo_ok else '> 0'}, got {v!r}")
        elif k == "max_duplicate_share" and v > 1:
            p.append(f"{cw}.{k}: a share between 0 and 1 (0.05 = 5 %), got {v!r}")
    return p


def matrix_tick_us(logical_type: str | None, unit: str | None, rate_hz: float) -> int:
    """Microseconds per step of a matrix layout's time axis.

    A timestamp axis has microseconds; an integer axis counts in its unit, and
    without one in seconds where every sample falls on a whole second (the
    1 Hz hydraulic files), else in microseconds.
    """
    if logical_type == "timestamp":
        return 1
    if unit is not None:
        return TIME_UNITS_US.get(unit, 1_000_000)
    period_us = 1e6 / rate_hz
    return 1_000_000 if period_us >= 1e6 and float(period_us).is_integer() and int(period_us) % 1_000_000 == 0 else 1


def _lint_matrix_interval(lay: dict[str, Any], props: list[Any], cur: dict[str, Any], where: str) -> list[str]:
    """A matrix layout fixes the step between samples; an integer sampling_interval must say the same.

    Otherwise every sample would be flagged as following a gap (or none
    would): e.g. ``sampling_interval: 1`` on a microsecond axis at 10 Hz.
    """
    rate, si = lay.get("sample_rate_hz"), cur.get("sampling_interval")
    if lay.get("shape") != "matrix" or not isinstance(si, int) or isinstance(si, bool):
        return []
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
        return []
    tprop = next((x for x in props if isinstance(x, dict) and _custom(x.get("customProperties")).get("role") == "time"), None)
    if tprop is None or tprop.get("logicalType") == "timestamp":
        return []
    unit = _custom(tprop.get("customProperties")).get("unit")
    if unit is not None and str(unit) not in TIME_UNITS_US:
        return []
    step = 1e6 / float(rate) / matrix_tick_us(tprop.get("logicalType"), None if unit is None else str(unit), float(rate))
    if abs(si - step) > 0.5 * step:
        name = next(k for k, v in TIME_UNITS_US.items()
                    if v == matrix_tick_us(tprop.get("logicalType"), None if unit is None else str(unit), float(rate)))
        return [f"{where}.sampling_interval: {si} steps of the time axis, but sample_rate_hz {rate:g} puts samples "
                f"{step:g} {name} apart on it (set sampling_interval: {round(step)})"]
    return []


def _lint_matrix_time(lay: dict[str, Any], props: list[Any], where: str) -> list[str]:
    """A matrix layout places samples 1/sample_rate_hz apart: its time axis must tell them apart.

    A timestamp time column has microseconds (1 MHz at most); an integer one
    counts in its ``unit`` (default microseconds). Whole seconds at 12 kHz
    gave 12,000 samples one time each, which curation then deleted as exact
    duplicates (issue 23).
    """
    rate = lay.get("sample_rate_hz")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
        return [f"{where}.sample_rate_hz: must be a positive number of samples per second, got {rate!r}"] if rate else []
    tprop = next((x for x in props if isinstance(x, dict) and _custom(x.get("customProperties")).get("role") == "time"), None)
    if tprop is None:
        return []
    lt = tprop.get("logicalType")
    unit = _custom(tprop.get("customProperties")).get("unit")
    step_us = 1e6 / float(rate)
    if unit is not None and str(unit) not in TIME_UNITS_US and lt != "timestamp":
        return [f"{where}.sample_rate_hz: the matrix layout places samples on the time axis, so the time column "
                f"{tprop.get('name')!r} must count in one of {list(TIME_UNITS_US)}, not {unit!r}"]
    tick = matrix_tick_us(lt, None if unit is None else str(unit), float(rate))
    name = next(k for k, v in TIME_UNITS_US.items() if v == tick)
    if step_us < tick:
        return [f"{where}.sample_rate_hz: samples {step_us:g} us apart cannot be told apart on a time axis in whole {name}; "
                f"give the time column (schema property {tprop.get('name')!r}) customProperties unit 'us' or 'ms', or make it a timestamp"]
    return []


def _build(doc: dict[str, Any], path: Path) -> Contract:
    """The ``Contract`` of a document that passed the lint (``load``): each part read by its own function.

    The lint has already said what is wrong with a document, so the builders
    do not check again: they apply the lab's defaults and spellings (role from
    the type, ``tab`` for a tab, durations in microseconds).
    """
    cps = doc.get("customProperties") or []
    custom = _custom(cps)
    obj = doc["schema"][0]
    lay = dict(custom.get("layout") or {})
    columns = [_column(prop) for prop in obj["properties"]]
    layout = _layout(lay, obj["properties"])
    curation = _curation(custom.get("curation") or {})
    sentinels = _sentinels(custom, obj)
    desc = doc.get("description") or {}
    limits = custom.get("limits") or {}
    return Contract(
        id=doc["id"],
        version=str(doc["version"]),
        status=doc["status"],
        tenant=doc["tenant"],
        name=doc.get("name") or doc["id"],
        kind=custom.get("kind", kind_sections.DEFAULT),
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
        section=_section(custom),
        missing_values=_missing_tokens(sentinels),
        raw=doc,
    )


def _column(prop: dict[str, Any]) -> Column:
    """One schema property as a ``Column``: a property without a role is a measurement if numeric, else an attribute."""
    pc = _custom(prop.get("customProperties"))
    lt = prop.get("logicalType", "string")
    role = pc.get("role") or ("measurement" if lt in ("number", "integer") else "attribute")
    opts = prop.get("logicalTypeOptions") or {}
    enum = prop.get("enum")
    if enum is not None:
        enum = tuple(e.get("value") if isinstance(e, dict) else e for e in enum)
    return Column(
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
        exclusive_minimum=opts.get("exclusiveMinimum"),
        exclusive_maximum=opts.get("exclusiveMaximum"),
        valid_values=_valid_values(prop.get("quality")),
        classification=prop.get("classification"),
        personal=bool(pc.get("personal", False)),
        quality=tuple(prop.get("quality") or ()),
        description=prop.get("description") or "",
    )


def _layout(lay: dict[str, Any], props: list[dict[str, Any]]) -> Layout:
    """The ``layout`` section with the lab's defaults: a long CSV with a header, in UTF-8 and UTC."""
    delim = lay.get("delimiter")
    return Layout(
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
        start=str(lay["start"]) if lay.get("start") is not None else None,
        time_tick_us=_tick_of(props, lay),
        format=lay.get("format"),
        measurement=_measurement(lay) if lay.get("format") is not None else None,
    )


def _curation(cur: dict[str, Any]) -> Curation:
    """The ``curation`` section with the lab's defaults; durations in microseconds.

    An integer ``sampling_interval`` counts steps of an integer time axis and
    is kept as it is; a duration (``10ms``) is converted.
    """
    return Curation(
        expected_step=(
            cur["sampling_interval"] if isinstance(cur.get("sampling_interval"), int)
            else parse_duration_us(cur["sampling_interval"]) if cur.get("sampling_interval") else None
        ),
        gap_factor=float(cur.get("gap_factor", 3.0)),
        outlier_mad=float(cur.get("outlier_mad", 8.0)),
        resample_us=parse_duration_us(cur["resample"]) if cur.get("resample") else None,
        max_duplicate_share=float(cur.get("max_duplicate_share", 0.05)),
    )


def _sentinels(custom: dict[str, Any], obj: dict[str, Any]) -> list[Any]:
    """Every value that means "no reading": the contract-level ``missingValues``, then each missingValues rule's.

    Rules on the table and on single properties both count: a file writes
    its sentinel the same way whichever column it stands in.
    """
    sentinels = list(custom.get("missingValues") or [])
    for rule in [*(obj.get("quality") or []), *[q for x in obj["properties"] for q in (x.get("quality") or [])]]:
        if isinstance(rule, dict) and (rule.get("metric") or rule.get("rule")) == "missingValues":
            sentinels += list(_quality_list(rule, "missingValues") or [])
    return sentinels


def _valid_values(quality: Any) -> tuple[Any, ...] | None:
    """The allowed values of a property: its invalidValues rule's validValues, if any."""
    for rule in quality or ():
        if isinstance(rule, dict) and (rule.get("metric") or rule.get("rule")) == "invalidValues":
            v = _quality_list(rule, "validValues")
            if isinstance(v, list) and v:
                return tuple(v)
    return None


def _tick_of(props: list[dict[str, Any]], lay: dict[str, Any]) -> int:
    rate = lay.get("sample_rate_hz")
    if lay.get("shape") != "matrix" or not isinstance(rate, (int, float)) or rate <= 0:
        return 1_000_000
    t = next(x for x in props if _custom(x.get("customProperties")).get("role") == "time")
    unit = _custom(t.get("customProperties")).get("unit")
    return matrix_tick_us(t.get("logicalType"), None if unit is None else str(unit), float(rate))


def _measurement(lay: dict[str, Any]) -> Any:
    from datalab.contracts.measurement import build

    return build(lay)


def _section(custom: dict[str, Any]) -> Any:
    """The kind's own section, built by its parser (None for a kind without one)."""
    sec = kind_sections.get(custom.get("kind", kind_sections.DEFAULT))
    return sec.build(custom.get(sec.key)) if sec.key is not None and sec.build is not None else None


def lint(path: Path) -> list[str]:
    """All problems of the contract at ``path`` (empty list: it is valid)."""
    doc, problems = read_yaml(path)
    return problems or lint_document(doc)


# Contracts loaded in this process, by resolved path: (file signature, the
# contract or its ContractError). Linting a wide contract is slow (the ODCS
# JSON schema, then pydantic; measured in docs/performance.md); re-reading
# every contract on every push made each firm's push pay for the widest
# contract of the lab.
_LOADED: dict[str, tuple[tuple[int, int, int], Contract | ContractError]] = {}


def _signature(path: Path) -> tuple[int, int, int]:
    """What invalidates a loaded contract: its file's mtime and size, and the purpose vocabulary's mtime."""
    st = path.stat()
    from datalab.config import settings
    from datalab.contracts import purposes as vocab

    try:
        pv = (Path(settings().contracts_dir) / vocab.FILE).stat().st_mtime_ns
    except OSError:
        pv = 0
    return st.st_mtime_ns, st.st_size, pv


def load(path: Path) -> Contract:
    """Load one contract, or raise ContractError listing every problem.

    Loaded once per process while the file (and the purpose vocabulary) is
    unchanged: see ``_LOADED``.
    """
    path = Path(path)
    key = str(path.resolve())
    try:
        sig = _signature(path)
    except OSError:
        sig = None
    hit = _LOADED.get(key) if sig is not None else None
    if hit is not None and hit[0] == sig:
        if isinstance(hit[1], ContractError):
            raise hit[1]
        return hit[1] if hit[1].path == path else replace(hit[1], path=path)
    doc, problems = read_yaml(path)
    problems = problems or _lint_cached(path, doc)
    if problems:
        err = ContractError(str(path), problems)
        if sig is not None:
            _LOADED[key] = (sig, err)
        raise err
    c = _build(doc, path)
    if sig is not None:
        _LOADED[key] = (sig, c)
    return c


@lru_cache(maxsize=1)
def _linter_digest() -> str:
    """A hash of the code that lints contracts: a cached lint result is only as good as the code that produced it."""
    import hashlib
    import sys

    from datalab.contracts import measurement as contract_measurement
    from datalab.contracts import policy as policy_mod
    from datalab.contracts import purposes
    from datalab.version import __version__

    h = hashlib.sha256(__version__.encode())
    # by module, not by path: the digest follows the code wherever the modules live
    files = [Path(str(m.__file__)) for m in (sys.modules[__name__], units, policy_mod, purposes,
                                             contract_measurement, kind_sections)]
    for f in [*files, *kind_sections.sources()]:
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(str(f).encode())
    return h.hexdigest()


def _lint_cached(path: Path, doc: Any) -> list[str]:
    """``lint_document(doc)``, remembered on disk by the contract's bytes, the purpose vocabulary and the linter's code.

    One process per CLI push: the per-process cache (``_LOADED``) does not
    help it, and linting a wide contract took a noticeable part of every
    firm's push (the ODCS JSON schema, then pydantic; measured in
    docs/performance.md). The result lives under
    ``$DATALAB_HOME/cache/lint``; a lab home that cannot be written to just
    lints every time. ``datalab contract lint`` always lints afresh.
    """
    import hashlib

    from datalab.config import settings
    from datalab.contracts import purposes as vocab

    try:
        s = settings()
        h = hashlib.sha256(_linter_digest().encode())
        h.update(",".join(kind_sections.names()).encode())  # the kinds registered in this process
        h.update(path.read_bytes())
        pv = Path(s.contracts_dir) / vocab.FILE
        h.update(pv.read_bytes() if pv.is_file() else b"")
        store = s.home / "cache" / "lint" / f"{h.hexdigest()}.json"
    except OSError:
        return lint_document(doc)
    try:
        return list(json.loads(store.read_text())["problems"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    problems = lint_document(doc)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(path), "problems": problems}))
        os.replace(tmp, store)
    except OSError:
        pass
    return problems


class Contracts(dict[str, Contract]):
    """The valid provider contracts by id, and ``broken``: each invalid one's file and problems.

    Contracts load independently: one firm's invalid contract is reported
    (``datalab contract list``, ``/v1/admin/contracts/broken``, the service's
    health) and refuses its own pushes, never another firm's.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.broken: dict[str, list[str]] = {}

    def broken_for(self, ref: str) -> tuple[str, list[str]] | None:
        """The broken contract ``ref`` names (file path, stem or tenant/stem), if it is one."""
        for path, problems in self.broken.items():
            p = Path(path)
            if ref in (path, p.stem, f"{p.parent.name}/{p.stem}", p.name) or Path(ref).resolve() == p.resolve():
                return path, problems
        return None


def load_all(contracts_dir: Path) -> Contracts:
    """Every valid provider contract under ``contracts_dir/providers``, by id; ``.broken`` holds the rest.

    A contract is broken when it does not lint, sits in another tenant's
    folder (the folder is the firm's area), or reuses an id an earlier file
    (in path order) already has.
    """
    out = Contracts()
    for path in sorted((Path(contracts_dir) / "providers").glob("*/*.yaml")):
        try:
            c = load(path)
        except ContractError as e:
            out.broken[str(path)] = list(e.problems)
            continue
        if path.parent.name != c.tenant:
            out.broken[str(path)] = [f"tenant {c.tenant!r} does not match its folder {path.parent.name!r}"]
            continue
        if c.id in out:
            out.broken[str(path)] = [f"id {c.id!r} is also used by {out[c.id].path}"]
            continue
        out[c.id] = c
    return out


def find(contracts: dict[str, Contract], ref: str) -> Contract:
    """Find a contract by id, file path, file stem or tenant/product."""
    if ref in contracts:
        return contracts[ref]
    for c in contracts.values():
        if ref in (str(c.path), c.path.stem, f"{c.tenant}/{c.product}", c.slug) or Path(ref).resolve() == c.path.resolve():
            return c
    from datalab.errors import NotFound

    broken = contracts.broken_for(ref) if isinstance(contracts, Contracts) else None
    if broken is not None:
        raise ContractError(broken[0], [f"this contract is invalid, so it takes no pushes until it is fixed: {x}" for x in broken[1]])
    raise NotFound(f"no contract {ref!r}; known: {', '.join(sorted(c.path.stem for c in contracts.values()))}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
