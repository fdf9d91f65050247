"""ASAM MDF 4 files (test benches, vehicle loggers) through asammdf.

A channel is named by its name, and by its channel group's index where the
name repeats (``source: {group: 2, channel: ...}``). Each channel group has
its own master (time) channel in seconds from the header's start time, so
channels of groups recorded at different rates stay separate series, each
with the rate measured from its own master. asammdf reads one channel at a
time (``iter_get``: one run of the file's data blocks at a time, which for a
file written in one block is the whole channel); memory is bounded by that,
not by the file.
"""

from __future__ import annotations

import datetime as dt
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datalab.intake.measurement.base import ChannelInfo, ReadError, as_utc


class MdfReader:
    name = "mdf4"

    def open(self, path: Path) -> Any:
        from asammdf import MDF

        try:
            return MDF(path)
        except Exception as e:
            why = str(e)
        # Raised outside the handler and without the cause: asammdf's traceback holds its half-built
        # MDF4, whose __del__ fails. Kept alive by the error, it was collected later at a random point,
        # once inside the interpreter's compile() (a CPython 3.11 "AST constructor recursion depth
        # mismatch"); freed here, its finaliser runs now, and its AttributeError is not news.
        hook, sys.unraisablehook = sys.unraisablehook, lambda _u: None
        try:
            gc.collect()
        finally:
            sys.unraisablehook = hook
        raise ReadError(f"asammdf cannot read the file ({why}); truncated or corrupt?")

    def close(self, handle: Any) -> None:
        handle.close()

    def _entries(self, handle: Any) -> list[tuple[int, int, Any]]:
        out = []
        for gi, g in enumerate(handle.groups):
            for ci, c in enumerate(g.channels):
                if (ci == 0 and c.name == "time") or getattr(c, "channel_type", 0) in (2, 3):
                    continue
                out.append((gi, ci, c))
        return out

    def _info(self, handle: Any, gi: int, ci: int, c: Any) -> ChannelInfo:
        g = handle.groups[gi]
        start, note = self.file_start(handle), None
        if start is None and handle.header.start_time is not None:
            note = (f"the header's start time {handle.header.start_time.isoformat()} has no time zone, "
                    "so it names no instant")
        return ChannelInfo(c.name, str(gi), int(g.channel_group.cycles_nr), unit=(c.unit or None),
                           start=start, start_note=note, master=f"{gi}:{ci}", kind="f")

    def channels(self, handle: Any) -> list[ChannelInfo]:
        return [self._info(handle, gi, ci, c) for gi, ci, c in self._entries(handle)]

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        found = [(gi, ci, c) for gi, ci, c in self._entries(handle)
                 if c.name == source and (group is None or str(gi) == str(group))]
        if not found:
            return None
        if len(found) > 1:
            raise ReadError(f"channel {source!r} is in several channel groups ({[gi for gi, _, _ in found]}): "
                            "name its group (source: {group: N, channel: ...})")
        return self._info(handle, *found[0])

    def _signals(self, handle: Any, ch: ChannelInfo) -> Iterator[Any]:
        """The channel as asammdf's ``iter_get`` gives it: a Signal per run of the file's data blocks."""
        gi, ci = (int(x) for x in (ch.master or "0:0").split(":"))
        try:
            yield from handle.iter_get(group=gi, index=ci)
        except Exception as e:
            raise ReadError(f"channel {ch.source!r} of group {gi} cannot be read ({e}); truncated or corrupt?") from e

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        for sig in self._signals(handle, ch):
            v = np.asarray(sig.samples)
            if v.dtype.kind not in "fiub":
                raise ReadError(f"channel {ch.source!r} holds {v.dtype} values, not numbers (a text or structure channel)")
            if v.ndim > 1:
                raise ReadError(f"channel {ch.source!r} holds arrays of shape {v.shape[1:]} per sample, not one number")
            for a in range(0, len(v), size):
                yield v[a:a + size]

    def times(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        """The channel's master (seconds from the header's start), in chunks like ``chunks``."""
        for sig in self._signals(handle, ch):
            t = np.asarray(sig.timestamps, dtype=np.float64)
            for a in range(0, len(t), size):
                yield t[a:a + size]

    def file_start(self, handle: Any) -> dt.datetime | None:
        """The header's start, only when it carries its zone (a naive one is not an instant)."""
        t = handle.header.start_time
        return as_utc(t) if t is not None and t.tzinfo is not None else None


READER = MdfReader()
