"""Delimited text as a measurement file: every numeric column a channel, time from a rate, an index or a side file.

For tables the long and wide layouts cannot express: no time or entity
column (a semiconductor process's 590 sensor columns, whose timestamps
and labels come in a side file joined by row number), or a header-less
file whose rows are samples. Columns are named by the header, or by
``layout.columns`` for a header-less file (default ``c1``, ``c2``, ...).
The table is parsed once by Polars (text through this path is read whole:
it is meant for tables of up to some hundred MB; larger text belongs in the
long or wide layouts, which stream).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datalab.intake.formats import FileRejected, open_stream, sniff
from datalab.intake.measurement.base import ChannelInfo, ReadError


def sniff_text(path: Path, name: str, delimiter: str | None = None) -> Any:
    """``formats.sniff``, where a file of one field per line (a list of numbers) is whitespace-separated."""
    try:
        return sniff(path, name, delimiter)
    except FileRejected as e:
        if delimiter is None and "cannot tell the delimiter" in e.reasons[0]:
            sn = sniff(path, name, "whitespace")
            lines = [ln for ln in sn.sample.splitlines()[:20] if ln.strip()]
            if lines and all(len(ln.split()) == 1 for ln in lines):
                return sn
        raise


class TextReader:
    name = "text"

    def __init__(self, header: bool = True, columns: tuple[str, ...] = (), delimiter: str | None = None) -> None:
        self.header, self.columns, self.delimiter = header, columns, delimiter

    def configured(self, ml: Any) -> TextReader:
        """A reader for the layout's ``header``, ``columns`` and ``delimiter`` (the registry's instance is shared)."""
        return TextReader(ml.header, ml.columns, ml.delimiter)

    def open(self, path: Path) -> Any:
        try:
            sn = sniff_text(path, path.name, self.delimiter)
        except FileRejected as e:
            raise ReadError("; ".join(e.reasons)) from e
        sep = sn.delimiter or ","
        try:
            with open_stream(path, sn.compression) as f:
                data = f.read()
            if sep == "whitespace":
                lines = [ln.split() for ln in data.decode("utf-8").splitlines() if ln.strip()]
                if self.header and lines:
                    names, lines = lines[0], lines[1:]
                else:
                    width = max((len(x) for x in lines), default=0)
                    names = list(self.columns) or [f"c{i + 1}" for i in range(width)]
                bad = next((i for i, x in enumerate(lines) if len(x) != len(names)), None)
                if bad is not None:
                    raise ReadError(f"line {bad + 1 + self.header}: {len(lines[bad])} field(s), expected {len(names)}")
                frame = pl.DataFrame({n: [x[j] for x in lines] for j, n in enumerate(names)},
                                     schema=dict.fromkeys(names, pl.String))
            else:
                frame = pl.read_csv(data, separator=sep, has_header=self.header, infer_schema=False,
                                    new_columns=list(self.columns) or None)
                if not self.header and not self.columns:
                    frame.columns = [f"c{i + 1}" for i in range(frame.width)]
        except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as e:
            raise ReadError(f"the text cannot be parsed as a table ({str(e).splitlines()[0]})") from e
        return frame

    def close(self, handle: Any) -> None:
        return None

    def _numbers(self, s: pl.Series) -> pl.Series | None:
        clean = s.str.strip_chars()
        num = clean.cast(pl.Float64, strict=False)
        bad = num.is_null() & clean.is_not_null() & (clean != "")
        return None if bad.any() else num

    def channels(self, handle: Any) -> list[ChannelInfo]:
        return [ChannelInfo(c, None, handle.height) for c in handle.columns if self._numbers(handle[c]) is not None]

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        if source not in handle.columns:
            return None
        if self._numbers(handle[source]) is None:
            s = handle[source].str.strip_chars()
            bad = s.filter(s.cast(pl.Float64, strict=False).is_null() & s.is_not_null() & (s != ""))
            raise ReadError(f"column {source!r} holds text that is not a number (e.g. {bad[0]!r})")
        return ChannelInfo(source, None, handle.height)

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        v = self._numbers(handle[ch.source]).to_numpy()  # type: ignore[union-attr]
        for a in range(0, len(v), size):
            yield v[a:a + size]

    def file_start(self, handle: Any) -> dt.datetime | None:
        return None


READER = TextReader()
