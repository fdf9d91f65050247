"""Measurement files (MATLAB, HDF5, NI TDMS, ASAM MDF 4, Parquet) under time-series contracts.

A firm describes such a file in its contract's ``layout`` (``format``,
``channels``, ``time``, ``side_files``; see ``datalab.contracts.measurement``) instead of writing
code. Each format is one module with a ``FormatReader`` that the registry
below names by the layout's ``format``; the generic reader (``core``) maps
the channels to the contract's measured properties, builds each series'
time axis from the data's own clock, and yields the lab's long table in
chunks so memory stays flat with the file's size.

Each format's library (scipy, h5py, npTDMS, asammdf, pyarrow) is imported
only when a file of that format is read: the ``formats`` extra installs them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from datalab.contracts.measurement import (
    REGISTRY,  # the formats a contract may name (declared with the contract's layout)
)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class Magic:
    """What a file's first bytes say it is: the layout format and a precise label."""

    format: str  # a REGISTRY key
    label: str  # e.g. "MATLAB 5.0 MAT-file", "ASAM MDF 4.10"


def sniff_magic(head: bytes) -> Magic | None:
    """The measurement format ``head`` (the file's first 1 KiB) starts with, if any.

    The magic numbers are the formats' own: MATLAB's 116-byte text header
    (v7.3 files are HDF5 behind a 512-byte user block), HDF5's signature,
    TDMS's ``TDSm`` lead-in, MDF's ``MDF     `` identification block and
    Arrow IPC's ``ARROW1``. Parquet (``PAR1``) is sniffed by ``formats``.
    """
    if head.startswith(b"MATLAB "):
        if head[512:520] == HDF5_MAGIC:
            return Magic("mat", "MATLAB 7.3 MAT-file (HDF5)")
        return Magic("mat", "MATLAB 5.0 MAT-file")
    if head.startswith(HDF5_MAGIC) or head[512:520] == HDF5_MAGIC:
        return Magic("hdf5", "HDF5")
    if head.startswith(b"TDSm"):
        return Magic("tdms", "NI TDMS")
    if head.startswith(b"TDSh"):
        return Magic("tdms", "NI TDMS index (.tdms_index)")
    if head.startswith(b"MDF     ") or head.startswith(b"UnFinMF "):
        version = head[8:16].decode("ascii", "replace").strip()
        return Magic("mdf4", f"ASAM MDF {version}" + (" (unfinalised)" if head.startswith(b"UnFin") else ""))
    if head.startswith(b"ARROW1"):
        return Magic("arrow", "Apache Arrow IPC")
    return None


def label(fmt: str) -> str:
    """The human name of a layout format (for messages)."""
    return REGISTRY.get(fmt, ("", "", fmt))[2]


def reader_for(fmt: str):  # -> datalab.intake.measurement.base.FormatReader
    """The format's reader: the registry's module, imported now (its library with it)."""
    module, attr, _ = REGISTRY[fmt]
    return getattr(importlib.import_module(module), attr)


__all__ = ["REGISTRY", "Magic", "label", "reader_for", "sniff_magic"]
