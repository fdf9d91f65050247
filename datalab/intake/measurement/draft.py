"""``datalab contract draft``: a draft ODCS contract from a firm's sample file(s).

Reads each file through its format's reader, and writes what the file
says: its numeric channels as measurements (type, the unit the file
states, the range seen), a layout mapping them, and the time base the
file supports (its own start and rate, its master channel, a timestamp
column, or else the sample index). What the file cannot say is left for
the firm and listed by the lint pass: the sovereignty policy (residency,
purposes), the status, units the file does not state, a sample rate a
MAT-file never holds. Nothing is invented silently: every guess is a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datalab.contracts import units
from datalab.intake.formats import FileRejected, describe
from datalab.intake.measurement import label, reader_for
from datalab.intake.measurement.base import ChannelInfo, ReadError


@dataclass
class Draft:
    doc: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the firm must check or fill in


def _ident(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")[:56] or "channel"
    if base[0].isdigit():
        base = f"c_{base}"
    name, i = base, 2
    while name.lower() in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name.lower())
    return name


def _is_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:62] or "measurements"


def _unit(file_unit: str | None, where: str, notes: list[str]) -> tuple[str, str | None]:
    """(the property's UCUM unit, file_unit for the layout) from what the file states."""
    if not file_unit or not file_unit.strip():
        notes.append(f"{where}: the file states no unit; '1' (dimensionless) was written: set the real one")
        return "1", None
    canon = units.canonical(file_unit)
    if canon is not None:
        return canon, (file_unit if file_unit != canon else None)
    ann = "{" + re.sub(r"[^A-Za-z0-9/._-]+", "_", file_unit.strip()) + "}"
    notes.append(f"{where}: the file's unit {file_unit!r} is not one the lab converts; written as the UCUM "
                 f"annotation {ann} (no conversion): replace it with a UCUM unit if it is one")
    return ann, file_unit


def _prop(name: str, lt: str, role: str, desc: str = "", unit: str | None = None, required: bool = False) -> dict[str, Any]:
    cp = [{"property": "role", "value": role}]
    if unit is not None:
        cp.append({"property": "unit", "value": unit})
    p: dict[str, Any] = {"name": name, "logicalType": lt}
    if required:
        p["required"] = True
    if desc:
        p["description"] = desc
    p["customProperties"] = cp
    return p


def _seen(reader: Any, h: Any, ch: ChannelInfo, size: int = 1 << 20) -> tuple[float | None, float | None, int]:
    lo, hi, nan = None, None, 0
    for v in reader.chunks(h, ch, size):
        if v.dtype.kind not in "fiub":
            raise ReadError(f"holds {v.dtype} values, not numbers")
        v = v.astype(np.float64, copy=False)
        nan += int(np.isnan(v).sum())
        ok = v[~np.isnan(v)]
        if len(ok):
            lo = float(ok.min()) if lo is None else min(lo, float(ok.min()))
            hi = float(ok.max()) if hi is None else max(hi, float(ok.max()))
    return lo, hi, nan


Range = tuple[ChannelInfo, float | None, float | None, int]  # a channel, its lowest and highest value, its NaN count


@dataclass
class _Scan:
    """What the sample files hold, gathered channel by channel (``_scan_file``) before anything is written."""

    channels: dict[tuple[str | None, str], Range] = field(default_factory=dict)  # by (group, source name)
    time_cols: list[str] = field(default_factory=list)  # timestamp columns (Parquet, Arrow)
    scalars: list[str] = field(default_factory=list)  # one value per file: attributes, not series
    starts: list[Any] = field(default_factory=list)  # each channel's absolute start (None: none stated)
    rates: list[float | None] = field(default_factory=list)  # each channel's sample rate
    file_starts: list[Any] = field(default_factory=list)  # each file's start (its header's)


def draft(files: list[Path], tenant: str, product: str | None = None) -> Draft:
    """A draft contract for ``files`` (one format; their channels united), with notes.

    The steps: find the one format the files share (``_sniff_format``),
    read every channel's range (``_scan_file``), decide the time base
    (``_time_base``), and write the properties, the layout and the document.
    Every guess on the way is a note.
    """
    if not files:
        raise ValueError("give at least one sample file")
    notes: list[str] = []
    fmt, sniffs = _sniff_format(files)
    reader, text_opts = _reader(fmt, sniffs)
    product = _slug(product or files[0].stem)
    taken = {"entity", "time_base", "sample_rate_hz"}
    scan = _Scan()
    for f in files:
        _scan_file(f, reader, scan, notes)
    if not scan.channels:
        raise ValueError(f"{files[0].name}: no numeric channel found")
    time, ts = _time_base(fmt, scan, notes)
    props = _base_props(ts)
    channel_props, layout_channels = _channel_props(fmt, scan.channels, taken, notes)
    props += channel_props
    layout: dict[str, Any] = {"format": fmt, **text_opts, "entity_value": _slug(files[0].stem), "time": time,
                              "channels": layout_channels}
    if scan.scalars:
        scalar_props, layout["attributes"] = _scalar_props(fmt, scan.scalars, taken)
        props += scalar_props
    doc = _document(files, tenant, product, fmt, props, layout)
    notes.append("status is 'draft': set it to 'active' once reviewed, or pushes are refused")
    return Draft(doc, list(dict.fromkeys(notes)))


def _sniff_format(files: list[Path]) -> tuple[str, list[Any]]:
    """The one format the files share (``text`` for delimited text), and their sniffs; a clear error for anything else."""
    from datalab.intake.measurement.text import sniff_text

    sniffs = []
    for f in files:
        if f.suffix.lower() in (".stl", ".step", ".stp", ".dxf"):
            raise ValueError(f"{f.name}: a CAD file: write a CAD contract (kind: cad, docs/cad.md); "
                             "`contract draft` drafts measurement files and text tables")
        try:
            sniffs.append(sniff_text(f, f.name))
        except FileRejected as e:
            raise ValueError("; ".join(e.reasons)) from e
    fmts = {s.format for s in sniffs}
    if len(fmts) != 1:
        raise ValueError(f"the files hold different formats ({sorted(describe(s) for s in sniffs)}); draft one contract per format")
    fmt = fmts.pop()
    fmt = "text" if fmt == "delimited" else fmt
    if fmt not in ("mat", "hdf5", "tdms", "mdf4", "parquet", "arrow", "text"):
        raise ValueError(f"{files[0].name}: {describe(sniffs[0])}: `contract draft` reads measurement files "
                         "(MATLAB, HDF5, TDMS, MDF 4, Parquet, Arrow) and delimited text")
    return fmt, sniffs


def _reader(fmt: str, sniffs: list[Any]) -> tuple[Any, dict[str, Any]]:
    """The format's reader, and for text the layout's header and delimiter (a header is a first line not all numbers)."""
    from datalab.intake.measurement.text import TextReader

    reader = reader_for(fmt)
    if fmt != "text":
        return reader, {}
    first = sniffs[0].sample.split(b"\n", 1)[0].decode("utf-8", "replace")
    fields = first.split() if sniffs[0].delimiter == "whitespace" else first.split(sniffs[0].delimiter or ",")
    header = not all(_is_number(x) for x in fields if x.strip())
    return TextReader(header=header, delimiter=sniffs[0].delimiter), {"header": header, "delimiter": sniffs[0].delimiter}


def _scan_file(f: Path, reader: Any, scan: _Scan, notes: list[str]) -> None:
    """Add one file's channels to ``scan``: a channel in several files is one, its ranges united."""
    h = reader.open(f)
    try:
        scan.file_starts.append(reader.file_start(h))
        for ch in reader.channels(h):
            _scan_channel(f, reader, h, ch, scan, notes)
    finally:
        reader.close(h)


def _scan_channel(f: Path, reader: Any, h: Any, ch: ChannelInfo, scan: _Scan, notes: list[str]) -> None:
    if ch.kind == "M":  # a timestamp column (Parquet, Arrow)
        scan.time_cols.append(ch.source)
        return
    try:
        lo, hi, nan = _seen(reader, h, ch)
    except ReadError as e:
        notes.append(f"{f.name}: channel {ch.source!r} left out: {e}")
        return
    if ch.length == 1:  # a scalar (a MAT-file's RPM, a setting): an attribute, not a series
        scan.scalars.append(ch.source)
        return
    key = (ch.group, ch.source)
    if key in scan.channels:
        lo, hi, nan = _united(scan.channels[key], lo, hi, nan)
    scan.channels[key] = (ch, lo, hi, nan)
    scan.starts.append(ch.start)
    scan.rates.append(ch.rate_hz)
    if ch.start_note:
        notes.append(f"{f.name}: {ch.start_note}")


def _united(old: Range, lo: float | None, hi: float | None, nan: int) -> tuple[float | None, float | None, int]:
    """A channel's range over two files (either may have seen no value)."""
    lo = min(x for x in (lo, old[1]) if x is not None) if lo is not None or old[1] is not None else None
    hi = max(x for x in (hi, old[2]) if x is not None) if hi is not None or old[2] is not None else None
    return lo, hi, nan + old[3]


def _time_base(fmt: str, scan: _Scan, notes: list[str]) -> tuple[dict[str, Any], bool]:
    """The layout's time and whether time is a timestamp: the master channel, a timestamp column, the rate, or the index.

    What the file cannot say (a zone, a start, a rate) is a note.
    """
    if fmt == "mdf4":
        time: dict[str, Any] = {"base": "column", "column": "master", "column_unit": "s"}
        naive = next((n for n in notes if "has no time zone" in n), None)
        if scan.file_starts[0] is None and naive:
            found = re.search(r"start time (\S+) has no time zone", naive)
            time["start"] = f"{found.group(1) if found else '1970-01-01T00:00:00'}+00:00"
            notes.append(f"the MDF header's start time has no zone: layout.time.start was written as "
                         f"{time['start']} (UTC assumed): correct the offset to the recording's zone")
        return time, True
    if scan.time_cols:
        return {"base": "column", "column": scan.time_cols[0], "column_unit": "timestamp"}, True
    if all(r for r in scan.rates):
        ts = all(s is not None for s in scan.starts)
        if not ts:
            notes.append("some channel has no absolute start: time is the sample index (integer); "
                         "to get timestamps, set layout.time.start and make the time property a timestamp")
        return {"base": "rate"}, ts
    notes.append(f"the file ({label(fmt)}) states no sample rate: time is the sample index; if you know the "
                 "rate, set layout.time: {base: rate, sample_rate_hz: ...} (and a start for timestamps)")
    return {"base": "index", "step": 1}, False


def _base_props(ts: bool) -> list[dict[str, Any]]:
    """The properties every drafted contract has: entity, time (a timestamp or the sample index) and the time's origin."""
    return [
        _prop("entity", "string", "entity", "The machine or rig (layout.entity_value).", required=True),
        _prop("time", "timestamp" if ts else "integer", "time",
              "Time of the sample (UTC)." if ts else "Sample index from the start of the recording.", required=True),
        _prop("time_base", "string", "attribute", "Where the series' time axis comes from (filled by the reader)."),
        _prop("sample_rate_hz", "number", "attribute", "The series' sample rate (filled by the reader)."),
    ]


def _channel_props(fmt: str, channels: dict[tuple[str | None, str], Range], taken: set[str],
                   notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A measurement property per channel, described by what the sample showed, and the layout entry mapping it."""
    names = [s for _, s in channels]
    props, layout_channels = [], []
    for (group, src), (ch, lo, hi, nan) in channels.items():
        name = _ident(src, taken)
        where = f"channel {src!r}" + (f" (group {group})" if group else "")
        unit, file_unit = _unit(ch.unit, where, notes)
        props.append(_prop(name, "number", "measurement", _channel_description(fmt, group, src, ch, lo, hi, nan), unit=unit))
        entry: dict[str, Any] = {"property": name}
        unique = names.count(src) == 1  # a name in one group only needs no group
        entry["source"] = src if unique or group is None else {"group": group, "channel": src}
        if file_unit is not None:
            entry["file_unit"] = file_unit
        layout_channels.append(entry)
    return props, layout_channels


def _channel_description(fmt: str, group: str | None, src: str, ch: ChannelInfo, lo: float | None, hi: float | None,
                         nan: int) -> str:
    desc = f"{label(fmt)} channel {src!r}" + (f" of group {group!r}" if group else "")
    desc += f"; seen in the sample: {ch.length:,} samples" + (f", range {lo:g} .. {hi:g}" if lo is not None else "")
    desc += f", {nan:,} NaN" if nan else ""
    desc += f", {ch.rate_hz:g} Hz" if ch.rate_hz else ""
    return desc


def _scalar_props(fmt: str, scalars: list[str], taken: set[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """An attribute property per scalar (one value per file), and the layout's attributes mapping them."""
    props, attributes = [], {}
    for src in dict.fromkeys(scalars):
        name = _ident(src, taken)
        props.append(_prop(name, "number", "attribute", f"{label(fmt)} scalar {src!r} (one value per file)"))
        attributes[name] = src
    return props, attributes


def _document(files: list[Path], tenant: str, product: str, fmt: str, props: list[dict[str, Any]],
              layout: dict[str, Any]) -> dict[str, Any]:
    """The ODCS document: a draft, with an empty sovereignty policy the firm must fill in."""
    return {
        "apiVersion": "v3.0.2",
        "kind": "DataContract",
        "id": f"urn:datalab:{tenant}:{product}",
        "name": f"{product} ({label(fmt)})",
        "version": "0.1.0",
        "status": "draft",
        "tenant": tenant,
        "dataProduct": product,
        "description": {"purpose": f"Drafted by `datalab contract draft` from {', '.join(f.name for f in files)}; "
                                   "review every property before activating."},
        "schema": [{"name": "readings", "physicalType": "table", "properties": props,
                    "quality": [{"metric": "rowCount", "mustBeGreaterThan": 0}]}],
        "customProperties": [
            {"property": "kind", "value": "timeseries"},
            {"property": "layout", "value": layout},
            {"property": "sovereignty", "value": {"residency": [], "purposes": [], "classification": "internal",
                                                  "license": "proprietary", "personal_data": False,
                                                  "export_control": False}},
        ],
    }
