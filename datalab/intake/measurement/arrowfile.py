"""Parquet and Arrow IPC files with any column names, through pyarrow.

The layout maps columns to the schema's measurements (``source`` is the
column's name), so a firm's own names need no renaming. Parquet is read a
batch of one column at a time; an Arrow IPC file a record batch at a time
(memory-mapped).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datalab.intake.measurement.base import ChannelInfo, ReadError


class ArrowReader:
    def __init__(self, name: str):
        self.name = name

    def open(self, path: Path) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            if self.name == "parquet":
                return pq.ParquetFile(path)
            return pa.ipc.open_file(pa.memory_map(str(path)))
        except Exception as e:
            raise ReadError(f"pyarrow cannot open the file ({e}); truncated or corrupt?") from e

    def close(self, handle: Any) -> None:
        if self.name == "parquet":
            handle.close()

    def _schema(self, handle: Any) -> Any:
        return handle.schema_arrow if self.name == "parquet" else handle.schema

    def _rows(self, handle: Any) -> int:
        if self.name == "parquet":
            return int(handle.metadata.num_rows)
        return sum(handle.get_batch(i).num_rows for i in range(handle.num_record_batches))

    def channels(self, handle: Any) -> list[ChannelInfo]:
        import pyarrow as pa

        n = self._rows(handle)
        return [ChannelInfo(f.name, None, n, kind="M" if pa.types.is_timestamp(f.type) else "f")
                for f in self._schema(handle)
                if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_timestamp(f.type)]

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        import pyarrow as pa

        sch = self._schema(handle)
        if source not in sch.names:
            return None
        f = sch.field(source)
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_timestamp(f.type)):
            raise ReadError(f"column {source!r} is {f.type}, not numbers")
        rate = meta.get(attrs.get("rate", "sample_rate_hz"))
        return ChannelInfo(source, None, self._rows(handle), unit=meta.get(attrs.get("unit", "units")) or meta.get("unit"),
                           rate_hz=float(rate) if rate else None, kind="M" if pa.types.is_timestamp(f.type) else "f")

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        try:
            if self.name == "parquet":
                batches = handle.iter_batches(batch_size=size, columns=[ch.source])
            else:
                batches = (handle.get_batch(i).select([ch.source]) for i in range(handle.num_record_batches))
            for rb in batches:
                yield rb.column(0).to_numpy(zero_copy_only=False)  # nulls become NaN (numbers) or NaT
        except Exception as e:
            raise ReadError(f"column {ch.source!r} cannot be read ({e}); truncated or corrupt?") from e

    def file_start(self, handle: Any) -> dt.datetime | None:
        return None


READER = ArrowReader("parquet")
ARROW = ArrowReader("arrow")
