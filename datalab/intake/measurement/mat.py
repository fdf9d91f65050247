"""MATLAB MAT-files: version 5 through scipy.io, version 7.3 (HDF5 inside) through h5py.

A channel is a numeric vector variable. A v5 file keeps each variable in
one compressed element, so scipy reads one variable at a time (the
file's largest variable bounds memory; v5 files are at most 2 GiB); a v7.3
file is sliced like any HDF5 dataset. MAT-files carry no units, rates or
start times: the contract declares them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datalab.intake.measurement.base import ChannelInfo, ReadError
from datalab.intake.measurement.hdf5 import READER as HDF5


class _V5:
    def __init__(self, path: Path):
        import scipy.io

        self.path = path
        _check_elements(path)
        try:
            self.vars = {n: (shape, cls) for n, shape, cls in scipy.io.whosmat(path)}
        except Exception as e:  # scipy raises ValueError, TypeError, MatReadError on damaged files
            raise ReadError(f"scipy.io cannot read the MAT-file's variables ({e}); truncated or corrupt?") from e


def _check_elements(path: Path) -> None:
    """Walk the v5 file's top-level element tags: one that runs past the end means a truncated file.

    scipy lists a cut variable's header without complaint; only reading it
    fails, so a variable the contract does not map would hide the damage.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(128)
        order = "<" if head[126:128] == b"IM" else ">"
        pos = 128
        while pos + 8 <= size:
            f.seek(pos)
            dtype, n = np.frombuffer(f.read(8), dtype=f"{order}u4")
            if dtype >> 16:  # small data element: tag and data in 8 bytes
                pos += 8
                continue
            pos += 8 + int(n) + (0 if dtype == 15 else (-int(n)) % 8)  # miCOMPRESSED is not padded
        if pos > size:
            raise ReadError(f"the file ends at byte {size:,}, inside a variable that runs to byte {pos:,}: truncated")


def _v5_len(shape: tuple[int, ...]) -> int | None:
    if len(shape) == 2 and 1 in shape:
        return shape[0] * shape[1]
    return shape[0] if len(shape) == 1 else None


class MatReader:
    name = "mat"

    def open(self, path: Path) -> Any:
        with open(path, "rb") as f:
            head = f.read(520)
        if head[512:520] == b"\x89HDF\r\n\x1a\n":
            return ("v73", HDF5.open(path))
        return ("v5", _V5(path))

    def close(self, handle: Any) -> None:
        if handle[0] == "v73":
            HDF5.close(handle[1])

    def channels(self, handle: Any) -> list[ChannelInfo]:
        kind, h = handle
        if kind == "v73":
            return HDF5.channels(h)
        return [ChannelInfo(n, None, n_) for n, (shape, cls) in h.vars.items()
                if cls in ("double", "single", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "logical")
                and (n_ := _v5_len(shape))]

    def info(self, handle: Any, source: str, group: str | None, attrs: dict[str, str]) -> ChannelInfo | None:
        kind, h = handle
        if kind == "v73":
            return HDF5.info(h, source, group, attrs)
        if source not in h.vars:
            return None
        shape, cls = h.vars[source]
        n = _v5_len(shape)
        if n is None or cls in ("char", "cell", "struct", "object", "sparse", "function"):
            raise ReadError(f"variable {source!r} is a {cls} of shape {shape}: a channel must be a numeric vector")
        return ChannelInfo(source, None, n)

    def chunks(self, handle: Any, ch: ChannelInfo, size: int) -> Iterator[np.ndarray]:
        kind, h = handle
        if kind == "v73":
            yield from HDF5.chunks(h, ch, size)
            return
        import scipy.io

        try:
            v = np.asarray(scipy.io.loadmat(h.path, variable_names=[ch.source])[ch.source]).ravel()
        except Exception as e:
            raise ReadError(f"variable {ch.source!r} cannot be read ({e}); truncated or corrupt?") from e
        if len(v) != ch.length:
            raise ReadError(f"variable {ch.source!r} holds {len(v):,} values, its header says {ch.length:,}; truncated?")
        for a in range(0, len(v), size):
            yield v[a:a + size]

    def file_start(self, handle: Any) -> dt.datetime | None:
        return None


READER = MatReader()
