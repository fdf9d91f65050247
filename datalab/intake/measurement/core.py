"""The generic measurement reader: channels to the lab's long table, time from the data's own clock.

One format reader (``base.FormatReader``) opens the file; this module maps
the layout's channels to the contract's measurements, checks what the file
states against what the contract says (channel present, unit, rate, equal
recording length), builds each series' time axis, and yields the long
table a chunk of one channel at a time. Every row carries the series'
time base and rate in the ``time_base`` and ``sample_rate_hz`` attributes,
so the curated table says where its time came from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datalab.contracts.contract import Contract
from datalab.contracts.measurement import (
    COLUMN_UNITS,
    RATE_ATTR,
    TIME_ATTR,
    ChannelSpec,
    MeasurementLayout,
    unit_matches,
)
from datalab.intake.measurement import label, reader_for
from datalab.intake.measurement.base import ChannelInfo, ReadError

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class _Series:
    spec: ChannelSpec
    info: ChannelInfo
    base: str
    rate: float | None
    start_us: int | None
    described: str  # the time base in words, stored with every row
    times: Any = None  # column base: an iterator factory of time chunks


def _parse_times(values: pl.Series, fmt: str | None) -> pl.Series:
    """Text to UTC timestamps: ISO 8601 (with an offset, or naive as UTC), or the layout's ``time.format``."""
    if fmt:
        return values.str.to_datetime(fmt, time_unit="us", strict=False).dt.replace_time_zone("UTC")
    aware = values.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="us", strict=False).dt.convert_time_zone("UTC")
    naive = values.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False).dt.replace_time_zone("UTC")
    return aware.fill_null(naive)


def _us(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


class MeasurementReader:
    """Reads one measurement file under ``contract``; problems go to ``problems`` (readers.Problems)."""

    def __init__(self, contract: Contract, path: Path, name: str, problems: Any,
                 side: dict[str, pl.DataFrame] | None = None):
        self.c = contract
        self.ml: MeasurementLayout = contract.layout.measurement
        self.path, self.name, self.problems = path, name, problems
        self.side = side or {}
        self.records = 0
        self._keyed: dict[str, tuple[ChannelInfo, pl.DataFrame]] = {}
        self.fmt = reader_for(self.ml.format)
        if hasattr(self.fmt, "configured"):  # a reader that takes layout options (text: header, columns)
            self.fmt = self.fmt.configured(self.ml)

    # -- checks -------------------------------------------------------------

    def _attrs(self) -> dict[str, str]:
        return {"unit": self.ml.unit_attribute, "rate": self.ml.rate_attribute, "start": self.ml.start_attribute}

    def _resolve(self, h: Any) -> list[_Series]:
        out: list[_Series] = []
        names: list[str] | None = None
        timestamp = self.c.time.logical_type == "timestamp"
        for i, spec in enumerate(self.ml.channels):
            where = f"layout.channels[{i}] ({spec.property})"
            try:
                info = self.fmt.info(h, spec.source, spec.group, self._attrs())
            except ReadError as e:
                self.problems.add("layout.channels", f"{where}: {e}")
                continue
            if info is None:
                if names is None:
                    names = [f"{x.group}/{x.source}" if x.group else x.source for x in self.fmt.channels(h)]
                grp = f" in group {spec.group!r}" if spec.group else ""
                self.problems.add("layout.channels", f"{where}: the file has no channel {spec.source!r}{grp} "
                                  f"(missing channel; it has {names[:12]}{' ...' if len(names) > 12 else ''})")
                continue
            prop = self.c.column(spec.property)
            declared = spec.file_unit or prop.source_unit or prop.unit
            if info.unit and declared and not unit_matches(info.unit, declared):
                self.problems.add("unit", f"{where}: the file's metadata gives channel {spec.source!r} the unit "
                                  f"{info.unit!r}, the contract says {declared!r} (wrong units? if it is only another "
                                  "spelling, declare file_unit)")
                continue
            t = spec.time
            if t.sample_rate_hz and info.rate_hz and abs(t.sample_rate_hz - info.rate_hz) > 1e-6 * t.sample_rate_hz:
                self.problems.add("layout.time.sample_rate_hz", f"{where}: channel {spec.source!r} is sampled at "
                                  f"{info.rate_hz:g} Hz by the file's own clock, the contract says {t.sample_rate_hz:g} Hz")
                continue
            s = self._series(h, where, spec, info, timestamp)
            if s is not None:
                out.append(s)
        self._check_lengths(out)
        return out

    def _series(self, h: Any, where: str, spec: ChannelSpec, info: ChannelInfo, timestamp: bool) -> _Series | None:
        t = spec.time
        if t.base == "index":
            return _Series(spec, info, "index", None, None, f"index (step {t.step})")
        if t.base == "rate":
            rate = t.sample_rate_hz or info.rate_hz
            if not rate:
                self.problems.add("layout.time.sample_rate_hz", f"{where}: channel {spec.source!r} has no sample "
                                  "rate: the file states none; declare sample_rate_hz in the layout")
                return None
            rate_from = "contract" if t.sample_rate_hz else "file"
            if not timestamp:
                return _Series(spec, info, "rate", rate, None,
                               f"rate {rate:g} Hz ({rate_from}); time = sample index x {t.step}")
            start = t.start or info.start or self.fmt.file_start(h)
            if start is None:
                why = f" ({info.start_note})" if info.start_note else ""
                self.problems.add("layout.time.start", f"{where}: channel {spec.source!r} has no absolute start "
                                  f"time{why}; declare time.start in the layout, or make the time property an integer "
                                  "(sample index)")
                return None
            start_from = "contract" if t.start else "file"
            return _Series(spec, info, "rate", rate, _us(start),
                           f"rate {rate:g} Hz ({rate_from}), start {start.isoformat()} ({start_from})")
        return self._column_series(h, where, spec, info, timestamp)

    def _column_series(self, h: Any, where: str, spec: ChannelSpec, info: ChannelInfo, timestamp: bool) -> _Series | None:
        t = spec.time
        col = t.column or ""
        side_name, _, side_col = col.partition(".")
        factor = COLUMN_UNITS.get(t.column_unit)
        size = self.ml.chunk_samples
        if col == "master" and hasattr(self.fmt, "times"):
            def times() -> Iterator[np.ndarray]:
                return self.fmt.times(h, info, size)
            described = f"master channel of group {info.group} ({t.column_unit} from the header's start)"
        elif side_name in self.side and side_col:
            frame = self.side[side_name]
            if side_col not in frame.columns:
                self.problems.add("layout.time.column", f"{where}: side file {side_name!r} has no column {side_col!r}")
                return None
            values = frame.get_column(side_col)
            if t.column_unit == "timestamp":
                values = _parse_times(values, t.format)
                bad = int(values.null_count() - frame.get_column(side_col).null_count())
                if bad:
                    what = f"timestamps of the format {t.format!r}" if t.format else "ISO 8601 timestamps (or declare time.format)"
                    self.problems.add("layout.time.column", f"{where}: {bad} value(s) of side file {side_name!r} "
                                      f"column {side_col!r} are not {what}")
                    return None
                arr = values.to_numpy()
            else:
                arr = values.cast(pl.Float64, strict=False).to_numpy()

            def times() -> Iterator[np.ndarray]:
                return (arr[a:a + size] for a in range(0, len(arr), size))
            described = f"column {side_col} of side file {side_name} ({t.column_unit})"
        else:
            try:
                tinfo = self.fmt.info(h, col, spec.group, self._attrs())
            except ReadError as e:
                self.problems.add("layout.time.column", f"{where}: {e}")
                return None
            if tinfo is None:
                self.problems.add("layout.time.column", f"{where}: the file has no time channel {col!r}")
                return None
            if tinfo.length != info.length:
                self.problems.add("layout.time.column", f"{where}: time channel {col!r} has {tinfo.length:,} "
                                  f"values, channel {spec.source!r} {info.length:,} (truncated recording?)")
                return None

            def times() -> Iterator[np.ndarray]:
                return self.fmt.chunks(h, tinfo, size)
            described = f"column {col} ({t.column_unit})"
        start = t.start or info.start or self.fmt.file_start(h)
        if timestamp and factor is not None and start is None:
            why = f" ({info.start_note})" if info.start_note else ""
            self.problems.add("layout.time.start", f"{where}: the time column {col!r} counts {t.column_unit} from a "
                              f"start the file does not state{why}; declare time.start in the layout")
            return None
        first = last = None
        n = 0
        try:
            for ch in times():
                if len(ch):
                    first = ch[0] if first is None else first
                    last, n = ch[-1], n + len(ch)
        except ReadError as e:
            self.problems.add("format", f"{where}: {e}")
            return None
        rate = None
        if n > 1 and first is not None:
            span = (float((last - first) / np.timedelta64(1, "s")) if factor is None
                    else float(last - first) * factor / 1e6)
            rate = (n - 1) / span if span > 0 else None
        return _Series(spec, info, "column", rate, _us(start) if start is not None else None,
                       described + (f", mean rate {rate:.6g} Hz" if rate else ""), times)

    def _check_lengths(self, series: list[_Series]) -> None:
        """Channels on a rate must cover the same duration, or the recording was cut short."""
        timed = [s for s in series if s.base == "rate" and s.rate]
        if len(timed) < 2:
            return
        dur = {s.spec.property: s.info.length / s.rate for s in timed}  # type: ignore[operator]
        tol = max(1.0 / s.rate for s in timed)  # type: ignore[operator]
        longest = max(dur, key=dur.__getitem__)
        for s in timed:
            d = dur[s.spec.property]
            if dur[longest] - d > tol:
                self.problems.add("recording", f"channel {s.spec.source!r} ({s.spec.property}) holds {s.info.length:,} "
                                  f"samples at {s.rate:g} Hz = {d:.6g} s, channel of {longest} {dur[longest]:.6g} s: "
                                  "a truncated recording (or a rate the contract gets wrong)")

    def _side_rows(self, h: Any, series: list[_Series]) -> None:
        """Row joins: as many rows as samples. Key joins: a key channel as long as each series, unique side keys."""
        for sf in self.ml.side_files:
            frame = self.side.get(sf.name)
            if frame is None:
                continue
            if sf.join == "row":
                for s in series:
                    if len(frame) != s.info.length:
                        self.problems.add("side_files", f"side file {sf.name!r} has {len(frame):,} rows, channel "
                                          f"{s.spec.source!r} {s.info.length:,} samples; joined by row number they "
                                          "must be as many")
                continue
            if sf.key not in frame.columns:
                self.problems.add("side_files", f"side file {sf.name!r} has no key column {sf.key!r} (it has {frame.columns})")
                continue
            try:
                kinfo = self.fmt.info(h, sf.data_key or "", None, self._attrs())
            except ReadError as e:
                self.problems.add("side_files", f"side file {sf.name!r}: key channel: {e}")
                continue
            if kinfo is None:
                self.problems.add("side_files", f"side file {sf.name!r}: the data file has no key channel {sf.data_key!r}")
                continue
            for s in series:
                if kinfo.length != s.info.length:
                    self.problems.add("side_files", f"side file {sf.name!r}: key channel {sf.data_key!r} has "
                                      f"{kinfo.length:,} values, channel {s.spec.source!r} {s.info.length:,} samples")
            keys = frame.get_column(sf.key).str.strip_chars().cast(pl.Float64, strict=False)
            if keys.null_count():
                self.problems.add("side_files", f"side file {sf.name!r}: {keys.null_count():,} value(s) of key column "
                                  f"{sf.key!r} are not numbers")
                continue
            dup = keys.filter(keys.is_duplicated())
            if len(dup):
                self.problems.add("side_files", f"side file {sf.name!r}: key {dup[0]:g} appears {int((keys == dup[0]).sum())} "
                                  f"times in column {sf.key!r}; a key join needs each key once")
                continue
            self._keyed[sf.name] = (kinfo, frame.with_columns(keys.alias("_key")))

    def _join_keys(self, key_iters: dict[str, Iterator[np.ndarray]], s: _Series, a: int) -> dict[str, pl.DataFrame]:
        """This chunk's side rows per key-joined side file, in sample order; unmatched keys are problems."""
        out: dict[str, pl.DataFrame] = {}
        for name, it in key_iters.items():
            kv = pl.DataFrame({"_key": next(it).astype(np.float64)})
            j = kv.join(self._keyed[name][1], on="_key", how="left", maintain_order="left")
            side_cols = [c for c in self._keyed[name][1].columns if c != "_key"]
            miss = j.filter(pl.col(side_cols[0]).is_null() & pl.col("_key").is_not_null()) if side_cols else j.clear()
            if len(miss):
                self.problems.add("side_files", f"channel {s.spec.source!r}, samples from {a:,}: {len(miss):,} key(s) "
                                  f"of channel {self._keyed[name][0].source!r} are not in side file {name!r} "
                                  f"(e.g. {miss['_key'][0]:g})")
            out[name] = j
        return out

    def _scalars(self, h: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for prop, src in self.ml.attributes:
            try:
                info = self.fmt.info(h, src, None, self._attrs())
                if info is None:
                    self.problems.add("layout.attributes", f"attribute {prop!r}: the file has no variable {src!r}")
                    continue
                if info.length != 1:
                    self.problems.add("layout.attributes", f"attribute {prop!r}: {src!r} holds {info.length:,} values, not one")
                    continue
                out[prop] = next(iter(self.fmt.chunks(h, info, 1)))[0].item()
            except ReadError as e:
                self.problems.add("layout.attributes", f"attribute {prop!r}: {e}")
        return out

    # -- reading ------------------------------------------------------------

    def batches(self) -> Iterator[pl.DataFrame]:
        from datalab.contracts.raw_table import long_schema

        try:
            h = self.fmt.open(self.path)
        except ReadError as e:
            self.problems.add("format", f"{label(self.ml.format)}: {e}")
            return
        try:
            series = self._resolve(h)
            self._side_rows(h, series)
            scalars = self._scalars(h)
            if self.problems:
                return
            schema = long_schema(self.c)
            for s in series:
                try:
                    yield from self._read_series(h, s, scalars, schema)
                except ReadError as e:
                    self.problems.add("format", f"{label(self.ml.format)}: {e}")
                    return
        finally:
            self.fmt.close(h)

    def _read_series(self, h: Any, s: _Series, scalars: dict[str, Any], schema: dict[str, pl.DataType]) -> Iterator[pl.DataFrame]:
        prop = self.c.column(s.spec.property)
        size = self.ml.chunk_samples
        entity = self.ml.entity_value or Path(self.name).stem
        unit = prop.source_unit or prop.unit
        timestamp = self.c.time.logical_type == "timestamp"
        times = s.times() if s.times is not None else None
        factor = COLUMN_UNITS.get(s.spec.time.column_unit)
        key_iters = {name: iter(self.fmt.chunks(h, kinfo, size)) for name, (kinfo, _) in self._keyed.items()}
        a = 0
        for v in self.fmt.chunks(h, s.info, size):
            n = len(v)
            joined = self._join_keys(key_iters, s, a)
            idx = np.arange(a, a + n, dtype=np.int64)
            if s.base == "index" or (s.base == "rate" and not timestamp):
                t = pl.Series("time", idx * s.spec.time.step)
            elif s.base == "rate":
                t = pl.Series("time", s.start_us + np.round(idx * (1e6 / s.rate)).astype(np.int64))  # type: ignore[operator]
            else:
                tv = next(times)  # type: ignore[arg-type]
                if factor is None:
                    t = pl.Series("time", tv.astype("datetime64[us]"))
                    t = t.dt.replace_time_zone("UTC") if timestamp else t.cast(pl.Int64)
                elif timestamp:
                    t = pl.Series("time", s.start_us + np.round(tv.astype(np.float64) * factor).astype(np.int64))
                else:
                    t = pl.Series("time", np.round(tv.astype(np.float64)).astype(np.int64))
            cols: dict[str, Any] = {
                "entity": pl.lit(entity, pl.String),
                "time": t.cast(schema["time"]) if t.dtype != schema["time"] else t,
                "sensor": pl.lit(prop.name, pl.String),
                "raw_value": pl.Series("raw_value", v.astype(np.float64, copy=False)),
                "raw_unit": pl.lit(unit, pl.String),
            }
            for attr in self.c.attributes:
                if attr.name == TIME_ATTR:
                    cols[attr.name] = pl.lit(s.described, pl.String)
                elif attr.name == RATE_ATTR:
                    cols[attr.name] = pl.lit(s.rate, pl.Float64)
                elif attr.name in scalars:
                    cols[attr.name] = pl.lit(scalars[attr.name])
                else:
                    cols[attr.name] = self._side_value(attr.name, a, n, joined)
            frame = pl.DataFrame({"time": cols.pop("time"), "raw_value": cols.pop("raw_value")})
            frame = frame.with_columns(**{k: (v if isinstance(v, pl.Expr) else pl.Series(k, v)) for k, v in cols.items()})
            self.records += n
            a += n
            yield frame.select(list(schema)).cast(schema)  # type: ignore[arg-type]

    def _side_value(self, attr: str, a: int, n: int, joined: dict[str, pl.DataFrame]) -> Any:
        for sf in self.ml.side_files:
            for prop, col in sf.columns:
                if prop != attr or sf.name not in self.side or col not in self.side[sf.name].columns:
                    continue
                if sf.join == "row":
                    return self._typed_side(attr, sf.name, col, self.side[sf.name].get_column(col).slice(a, n), a)
                if sf.name in joined:
                    return self._typed_side(attr, sf.name, col, joined[sf.name].get_column(col), a)
        return pl.lit(None)

    def _typed_side(self, attr: str, side: str, col: str, text: pl.Series, a: int) -> pl.Series:
        """Side-file text cast to the attribute's type; values that do not cast are problems (never silently null)."""
        from datalab.contracts.raw_table import VALUE_DTYPES

        want = VALUE_DTYPES[self.c.column(attr).logical_type]
        clean = text.str.strip_chars()
        clean = pl.select(pl.when(clean != "").then(clean)).to_series().alias(attr)
        if want == pl.String:
            return clean
        out = clean.cast(pl.Float64, strict=False).cast(want, strict=False) if want == pl.Int64 else clean.cast(want, strict=False)
        bad = out.is_null() & clean.is_not_null()
        if bad.any():
            self.problems.add("side_files", f"side file {side!r}, column {col!r}: the value(s) joined to "
                              f"{int(bad.sum()):,} sample(s), from sample {a + int(bad.arg_true()[0])}, are not "
                              f"{self.c.column(attr).logical_type} (e.g. {clean.filter(bad)[0]!r})")
        return out


def format_problem(layout_format: str | None, sniffed: Any) -> str | None:
    """Why a file cannot be read under the layout's format (None: it can): both formats are named."""
    from datalab.intake.formats import describe

    if layout_format is None:
        return (f"the content is {sniffed.label}, but the contract's layout reads delimited text, JSON Lines or "
                f"Parquet by column name; describe the file with layout.format (e.g. `datalab contract draft FILE`)")
    if {"delimited": "text"}.get(sniffed.format, sniffed.format) != layout_format:
        return (f"the contract's layout says {label(layout_format)} (format: {layout_format}), "
                f"the file holds {describe(sniffed)}")
    return None


def read_checked(tr: Any) -> Iterator[pl.DataFrame]:
    """The measurement path of ``readers.TimeseriesReader``: format check, then ``MeasurementReader``."""
    why = format_problem(tr.lay.format, tr.sniffed)
    if why is not None:
        tr.problems.add("layout.format", why)
        return
    r = MeasurementReader(tr.c, tr.path, tr.name, tr.problems, getattr(tr, "side", None))
    try:
        yield from r.batches()
    finally:
        tr.records += r.records
