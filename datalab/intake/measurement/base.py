"""What every format's reader offers the generic reader (``core``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

LABVIEW_EPOCH = dt.datetime(1904, 1, 1, tzinfo=dt.UTC)


class ReadError(Exception):
    """The file (or one channel of it) cannot be read; the message says why, for the firm."""


@dataclass
class ChannelInfo:
    """One channel or variable as the file describes it."""

    source: str
    group: str | None
    length: int
    unit: str | None = None  # the unit text in the file's metadata, if any
    rate_hz: float | None = None  # the file's own sample rate, if it states one
    start: dt.datetime | None = None  # the file's own absolute start (aware), if it states one
    start_note: str | None = None  # why the file's start cannot be used, when it has a useless one
    master: str | None = None  # the channel holding this one's time (MDF master), if any
    kind: str = "f"  # numpy dtype kind


class FormatReader(Protocol):
    """One measurement format, through its own library."""

    name: str

    def open(self, path: Path) -> Any:
        """A handle (closed with ``close``); raises ReadError when the library cannot open the file."""

    def close(self, handle: Any) -> None: ...

    def channels(self, handle: Any) -> list[ChannelInfo]:
        """Every numeric channel of the file (for ``contract draft`` and for naming what exists)."""

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        """The channel ``source`` (in ``group``), or None when the file has none of that name."""

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        """The channel's values, ``size`` at a time, in order (never more than a chunk in memory where the library allows)."""

    def file_start(self, handle: Any) -> dt.datetime | None:
        """The recording's absolute start from the file's header, if it has one."""


def as_utc(t: Any) -> dt.datetime | None:
    """A numpy/pandas/python time as an aware UTC datetime (naive ones are taken as UTC)."""
    if t is None:
        return None
    if isinstance(t, np.datetime64):
        if np.isnat(t):
            return None
        t = t.astype("datetime64[us]").item()
    if isinstance(t, dt.datetime):
        return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
    return None
