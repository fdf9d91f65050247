"""The measurement part of a contract's ``layout``: parsed once, linted with field paths.

A firm writes, under ``customProperties.layout``::

    format: tdms                  # mat | hdf5 | tdms | mdf4 | parquet | arrow
    entity_value: rig-7           # the entity every series belongs to
    time: {base: rate, sample_rate_hz: 1000, start: "2024-05-01T08:00:00Z"}
    channels:
      - {property: drive_end, source: X097_DE_time, sample_rate_hz: 48000}
      - {property: volts, source: {group: Layer Data, channel: First  Channel}, file_unit: Volts}
    side_files:
      - {name: labels, match: "labels\\.csv$", join: row, columns: {label: fault}}

The time base says where a series' time axis comes from, and nothing is
invented: ``rate`` (start + i / rate; the start and rate from the contract
or the file's own metadata), ``index`` (i * step, an integer time), or
``column`` (a channel or variable of the file, or a side file's column,
holding the time). Anything the file states too (unit, rate) must agree
with the contract, or the delivery is rejected naming both.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from datalab.contracts import units

# layout format name -> (module, its reader object, the name people know the format by).
# A new format is one module with a reader (``base.FormatReader``) and one line here.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "mat": ("datalab.intake.measurement.mat", "READER", "MATLAB MAT-file"),
    "hdf5": ("datalab.intake.measurement.hdf5", "READER", "HDF5"),
    "tdms": ("datalab.intake.measurement.tdms", "READER", "NI TDMS"),
    "mdf4": ("datalab.intake.measurement.mdf", "READER", "ASAM MDF 4"),
    "parquet": ("datalab.intake.measurement.arrowfile", "READER", "Apache Parquet"),
    "arrow": ("datalab.intake.measurement.arrowfile", "ARROW", "Apache Arrow IPC"),
    "text": ("datalab.intake.measurement.text", "READER", "delimited text (columns as channels)"),
}

BASES = ("rate", "index", "column")
COLUMN_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "timestamp": None}
JOINS = ("row", "key")
KEYS = {"format", "entity_value", "time", "channels", "side_files", "unit_attribute",
        "rate_attribute", "start_attribute", "chunk_samples", "attributes", "header", "columns", "delimiter"}
TIME_ATTR = "time_base"  # attribute properties the reader fills, so the curated table says the time base
RATE_ATTR = "sample_rate_hz"


@dataclass(frozen=True)
class TimeSpec:
    base: str = "rate"
    sample_rate_hz: float | None = None
    start: dt.datetime | None = None
    step: int = 1
    column: str | None = None  # a channel/variable of the file, or "side-file-name.column"
    column_unit: str = "s"
    format: str | None = None  # strftime format of text timestamps in a side file's time column


@dataclass(frozen=True)
class ChannelSpec:
    property: str
    source: str
    group: str | None = None  # TDMS group, MDF channel-group index
    file_unit: str | None = None
    time: TimeSpec = TimeSpec()


@dataclass(frozen=True)
class SideFile:
    name: str
    match: str
    join: str = "row"
    key: str | None = None  # side file column joined to ...
    data_key: str | None = None  # ... this channel of the data file (key join)
    columns: tuple[tuple[str, str], ...] = ()  # (attribute property, side column)
    header: bool = True
    names: tuple[str, ...] = ()  # column names of a header-less side file


@dataclass(frozen=True)
class MeasurementLayout:
    format: str
    channels: tuple[ChannelSpec, ...]
    entity_value: str | None = None
    side_files: tuple[SideFile, ...] = ()
    unit_attribute: str = "units"
    rate_attribute: str = "sample_rate_hz"
    start_attribute: str = "start_time"
    chunk_samples: int = 1 << 18  # samples per batch: the push holds a few batches (RawWriter queue)
    attributes: tuple[tuple[str, str], ...] = ()  # (attribute property, scalar variable of the file)
    header: bool = True  # text: the first line names the columns
    columns: tuple[str, ...] = ()  # text: the columns' names of a header-less file
    delimiter: str | None = None  # text: as formats.sniff names it ("," "\t" ";" "|" "whitespace"); None: sniffed


def _parse_start(v: Any) -> dt.datetime | None:
    if v is None:
        return None
    t = v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _time(d: dict[str, Any], default: TimeSpec) -> TimeSpec:
    return TimeSpec(
        base=d.get("base", default.base),
        sample_rate_hz=float(d["sample_rate_hz"]) if d.get("sample_rate_hz") is not None else default.sample_rate_hz,
        start=_parse_start(d["start"]) if d.get("start") is not None else default.start,
        step=int(d.get("step", default.step)),
        column=d.get("column", default.column),
        column_unit=d.get("column_unit", default.column_unit),
        format=d.get("format", default.format),
    )


def build(lay: dict[str, Any]) -> MeasurementLayout:
    """The parsed layout (``lint`` has passed)."""
    default = _time(lay.get("time") or {}, TimeSpec())
    chans = []
    for ch in lay.get("channels") or []:
        src = ch["source"]
        group = None
        if isinstance(src, dict):
            group, src = src.get("group"), src["channel"]
        overrides = {k: ch[k] for k in ("base", "sample_rate_hz", "start", "step", "column", "column_unit") if k in ch}
        chans.append(ChannelSpec(ch["property"], str(src), None if group is None else str(group),
                                 ch.get("file_unit"), _time(overrides, default)))
    sides = tuple(
        SideFile(s["name"], s["match"], s.get("join", "row"), s.get("key"), s.get("data_key"),
                 tuple((k, v) for k, v in (s.get("columns") or {}).items()),
                 bool(s.get("header", True)), tuple(str(x) for x in s.get("names") or ()))
        for s in lay.get("side_files") or []
    )
    return MeasurementLayout(
        format=lay["format"], channels=tuple(chans), entity_value=lay.get("entity_value"), side_files=sides,
        unit_attribute=lay.get("unit_attribute", "units"), rate_attribute=lay.get("rate_attribute", "sample_rate_hz"),
        start_attribute=lay.get("start_attribute", "start_time"), chunk_samples=int(lay.get("chunk_samples", 1 << 18)),
        attributes=tuple((k, str(v)) for k, v in (lay.get("attributes") or {}).items()),
        header=bool(lay.get("header", True)), columns=tuple(str(c) for c in lay.get("columns") or ()),
        delimiter={"\\t": "\t", "tab": "\t", "space": "whitespace"}.get(lay.get("delimiter"), lay.get("delimiter")),
    )


def lint(lay: dict[str, Any], props: list[dict[str, Any]], where: str) -> list[str]:
    """Problems of a measurement layout, each with its field path (empty: fine)."""
    p: list[str] = []
    fmt = lay.get("format")
    if fmt not in REGISTRY:
        return [f"{where}.format: {fmt!r} is not a measurement format the lab reads (one of {sorted(REGISTRY)})"]
    p += [f"{where}.{k}: unknown layout key for format {fmt} (allowed: {sorted(KEYS)})"
          for k in sorted(set(lay) - KEYS - {"shape"})]
    by_name = {x.get("name"): x for x in props if isinstance(x, dict)}

    def role(x: dict[str, Any]) -> str:
        c = {q.get("property"): q.get("value") for q in x.get("customProperties") or [] if isinstance(q, dict)}
        return c.get("role") or ("measurement" if x.get("logicalType") in ("number", "integer") else "attribute")

    time_prop = next((x for x in by_name.values() if role(x) == "time"), {})
    time_type = time_prop.get("logicalType")
    for attr, lt in ((TIME_ATTR, "string"), (RATE_ATTR, "number")):
        x = by_name.get(attr)
        if x is None or role(x) != "attribute" or x.get("logicalType") != lt:
            p.append(f"schema[0].properties: a {fmt} layout needs an attribute property {attr!r} ({lt}), "
                     "which the reader fills so the curated table says each series' time base")
    p += _lint_time(lay.get("time") or {}, f"{where}.time", time_type)
    chans = lay.get("channels")
    if not isinstance(chans, list) or not chans:
        p.append(f"{where}.channels: required, a list mapping the file's channels to the schema's measurements")
        chans = []
    seen: set[str] = set()
    for i, ch in enumerate(chans):
        w = f"{where}.channels[{i}]"
        if not isinstance(ch, dict):
            p.append(f"{w}: must be a mapping with property and source")
            continue
        prop = ch.get("property")
        if prop not in by_name or role(by_name[prop]) != "measurement":
            p.append(f"{w}.property: {prop!r} is not a measurement of the schema")
        if prop in seen:
            p.append(f"{w}.property: {prop!r} is mapped twice")
        seen.add(prop)
        src = ch.get("source")
        if isinstance(src, dict):
            if not src.get("channel"):
                p.append(f"{w}.source.channel: required (the channel's name in its group)")
        elif not isinstance(src, str | int) or src == "":
            p.append(f"{w}.source: required, the channel's or variable's name in the file")
        fu = ch.get("file_unit")
        if fu is not None and not isinstance(fu, str):
            p.append(f"{w}.file_unit: must be the unit as the file writes it (text)")
        p += _lint_time({k: ch[k] for k in ("base", "sample_rate_hz", "start", "step", "column", "column_unit") if k in ch},
                        w, time_type, merged=lay.get("time") or {})
    for name, x in by_name.items():
        if role(x) == "measurement" and name not in seen:
            p.append(f"{where}.channels: measurement {name!r} is mapped to no channel of the file")
    for i, s in enumerate(lay.get("side_files") or []):
        w = f"{where}.side_files[{i}]"
        if not isinstance(s, dict) or not s.get("name") or not s.get("match"):
            p.append(f"{w}: needs a name and a match (regular expression on the delivered file's name)")
            continue
        try:
            re.compile(s["match"])
        except re.error as e:
            p.append(f"{w}.match: not a regular expression ({e})")
        if s.get("header") is False and not s.get("names"):
            p.append(f"{w}.names: a header-less side file needs the names of its columns in order")
        if s.get("join", "row") not in JOINS:
            p.append(f"{w}.join: must be one of {list(JOINS)}")
        if s.get("join") == "key" and not (s.get("key") and s.get("data_key")):
            p.append(f"{w}: a key join needs key (the side file's column) and data_key (the data file's channel)")
        for k in (s.get("columns") or {}):
            if k not in by_name or role(by_name[k]) != "attribute":
                p.append(f"{w}.columns.{k}: not an attribute property of the schema")
    for k in lay.get("attributes") or {}:
        if k not in by_name or role(by_name[k]) != "attribute":
            p.append(f"{where}.attributes.{k}: not an attribute property of the schema")
    if lay.get("entity_value") is not None and not isinstance(lay["entity_value"], str | int):
        p.append(f"{where}.entity_value: must be text")
    return p


def _lint_time(t: dict[str, Any], w: str, time_type: str | None, merged: dict[str, Any] | None = None) -> list[str]:
    p: list[str] = []
    full = {**(merged or {}), **t}
    base = full.get("base", "rate")
    if base not in BASES:
        return [f"{w}.base: must be one of {list(BASES)} (got {base!r})"]
    rate = t.get("sample_rate_hz")
    if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
        p.append(f"{w}.sample_rate_hz: must be a positive number of samples per second")
    if t.get("start") is not None:
        try:
            st = t["start"] if isinstance(t["start"], dt.datetime) else dt.datetime.fromisoformat(str(t["start"]).replace("Z", "+00:00"))
            if st.tzinfo is None:
                p.append(f"{w}.start: {t['start']!r} has no UTC offset, so it names no instant (add Z or +hh:mm)")
        except ValueError:
            p.append(f"{w}.start: {t['start']!r} is not an ISO 8601 timestamp")
    if "step" in t and (not isinstance(t["step"], int) or t["step"] <= 0):
        p.append(f"{w}.step: must be a positive integer")
    if merged is None or t:
        if base == "index" and time_type == "timestamp":
            p.append(f"{w}.base: an index time base gives an integer time; the schema's time property is a timestamp "
                     "(use base: rate with a start, or make the time property an integer)")
        if base == "column" and not full.get("column"):
            p.append(f"{w}.column: required for base: column (the channel, variable or side-file column holding time)")
        if full.get("column_unit", "s") not in COLUMN_UNITS:
            p.append(f"{w}.column_unit: must be one of {list(COLUMN_UNITS)}")
    return p


def unit_matches(file_unit: str, declared: str) -> bool:
    """Whether the file's unit text means the declared unit (same spelling, or the same UCUM unit)."""
    if file_unit.strip() == declared.strip():
        return True
    a, b = units.canonical(file_unit), units.canonical(declared)
    return a is not None and a == b
