"""NI TDMS files (LabVIEW, DAQmx, SignalExpress) through npTDMS.

A channel is named by its group and channel name (names repeat across
groups in real files, so ``source: {group: ..., channel: ...}``; a bare name
is accepted when it is unique). The file states each channel's unit
(``unit_string``), rate (``wf_increment``) and start (``wf_start_time``);
a start of 1904-01-01, LabVIEW's zero, means the recording holds only
relative time. The file is opened in streaming mode and read
``read_data(offset, length)`` a chunk at a time, big- or little-endian alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datalab.intake.measurement.base import LABVIEW_EPOCH, ChannelInfo, ReadError, as_utc


class TdmsReader:
    name = "tdms"

    def open(self, path: Path) -> Any:
        from nptdms import TdmsFile

        try:
            return TdmsFile.open(path)
        except Exception as e:  # npTDMS raises ValueError, struct.error, EOFError on damaged files
            raise ReadError(f"npTDMS cannot read the file's metadata ({e}); truncated or corrupt?") from e

    def close(self, handle: Any) -> None:
        handle.close()

    def _info(self, g: Any, c: Any) -> ChannelInfo:
        p = c.properties
        inc = p.get("wf_increment")
        start = as_utc(p.get("wf_start_time"))
        note = None
        if start is not None and start <= LABVIEW_EPOCH + dt.timedelta(days=1):
            start, note = None, "its wf_start_time is 1904-01-01, LabVIEW's zero: the recording holds relative time only"
        kind = np.dtype(c.dtype).kind if c.dtype is not None else "f"
        return ChannelInfo(c.name, g.name, len(c), unit=p.get("unit_string") or None,
                           rate_hz=(1.0 / float(inc)) if inc else None, start=start, start_note=note, kind=kind)

    def channels(self, handle: Any) -> list[ChannelInfo]:
        return [self._info(g, c) for g in handle.groups() for c in g.channels()
                if c.dtype is not None and np.dtype(c.dtype).kind in "fiub"]

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        found = [(g, c) for g in handle.groups() for c in g.channels()
                 if c.name == source and (group is None or g.name == group)]
        if not found:
            return None
        if len(found) > 1:
            raise ReadError(f"channel {source!r} is in several groups ({[g.name for g, _ in found]}): "
                            "name its group (source: {group: ..., channel: ...})")
        return self._info(*found[0])

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        c = handle[ch.group][ch.source]
        for a in range(0, ch.length, size):
            n = min(size, ch.length - a)
            try:
                v = np.asarray(c.read_data(a, n))
            except Exception as e:
                raise ReadError(f"channel {ch.group}/{ch.source} cannot be read past sample {a} ({e}); truncated?") from e
            if len(v) < n:
                raise ReadError(f"channel {ch.group}/{ch.source} ends after {a + len(v):,} of the {ch.length:,} "
                                "samples its metadata announces: the recording is truncated")
            yield v

    def file_start(self, handle: Any) -> dt.datetime | None:
        return None


READER = TdmsReader()
