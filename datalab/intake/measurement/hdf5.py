"""HDF5 files (and MATLAB 7.3 MAT-files, which are HDF5) through h5py.

A channel is a numeric dataset of one dimension (or n x 1, 1 x n, as MATLAB
stores vectors), named by its path. Its unit, rate and start may be
attributes of the dataset; the layout names them (``unit_attribute``,
``rate_attribute``, ``start_attribute``). Reading slices the dataset, so
only one chunk is in memory at a time, however long the recording.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datalab.intake.measurement.base import ChannelInfo, ReadError, as_utc


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "SU":
            return _text(v.flat[0]) if v.size else None
        if v.dtype.kind in "ui" and v.ndim >= 1:  # MATLAB char arrays are uint16 codes
            return "".join(chr(int(c)) for c in v.flat)
    return str(v)


def _vector_len(shape: tuple[int, ...]) -> int | None:
    if len(shape) == 1:
        return shape[0]
    if len(shape) == 2 and 1 in shape:
        return shape[0] * shape[1]
    return None


class Hdf5Reader:
    name = "hdf5"

    def open(self, path: Path) -> Any:
        import h5py

        try:
            return h5py.File(path, "r")
        except OSError as e:
            raise ReadError(f"h5py cannot open the file ({e}); truncated or corrupt?") from e

    def close(self, handle: Any) -> None:
        handle.close()

    def channels(self, handle: Any) -> list[ChannelInfo]:
        import h5py

        out: list[ChannelInfo] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub" and _vector_len(obj.shape):
                info = self.info(handle, name, None, {})
                if info is not None:
                    out.append(info)

        handle.visititems(visit)
        return out

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        import h5py

        path = f"{group}/{source}" if group else source
        try:
            ds = handle.get(path)
        except (KeyError, OSError, ValueError) as e:
            raise ReadError(f"dataset {path!r} cannot be read ({e})") from e
        if not isinstance(ds, h5py.Dataset):
            return None
        n = _vector_len(ds.shape)
        if n is None or ds.dtype.kind not in "fiub":
            raise ReadError(f"dataset {path!r} is {ds.dtype} of shape {ds.shape}: a channel must be a numeric vector")
        a = ds.attrs
        unit = _text(a.get(attrs.get("unit", "units"))) or _text(a.get("unit"))
        rate = a.get(attrs.get("rate", "sample_rate_hz"))
        start_raw = _text(a.get(attrs.get("start", "start_time")))
        start = None
        if start_raw:
            try:
                start = as_utc(dt.datetime.fromisoformat(start_raw.replace("Z", "+00:00")))
            except ValueError:
                start = None
        return ChannelInfo(path, group, int(n), unit=unit,
                           rate_hz=float(np.asarray(rate).flat[0]) if rate is not None else None,
                           start=start, kind=ds.dtype.kind)

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        ds = handle[ch.source]
        for a in range(0, ch.length, size):
            b = min(ch.length, a + size)
            try:
                if ds.ndim == 1:
                    v = ds[a:b]
                elif ds.shape[0] == 1:
                    v = ds[0, a:b]
                else:
                    v = ds[a:b, 0]
            except OSError as e:
                raise ReadError(f"dataset {ch.source!r} cannot be read past sample {a} ({e}); truncated?") from e
            yield np.asarray(v)

    def file_start(self, handle: Any) -> dt.datetime | None:
        return None


READER = Hdf5Reader()
