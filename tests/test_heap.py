"""Allocator settings: glibc's heap around validation (datalab.quality.heap), Polars' jemalloc decay (datalab.__init__)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from datalab.quality import heap


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> _MallInfo2:
    f = heap._LIBC.mallinfo2  # type: ignore[union-attr]
    f.restype = _MallInfo2
    return f()


pytestmark = pytest.mark.skipif(heap._LIBC is None or not hasattr(heap._LIBC, "mallinfo2"),
                                reason="glibc 2.33 or later only (elsewhere pandas_heap does nothing)")
BIG = 96 << 20  # above glibc's own ceiling for its dynamic mmap threshold (32 MB)


def test_large_blocks_stay_on_the_heap_inside_and_are_given_back_after() -> None:
    before = _mallinfo()
    with heap.pandas_heap() as applied:
        assert applied
        a = np.ones(BIG // 8)
        inside = _mallinfo()
        assert inside.hblkhd - before.hblkhd < BIG and inside.arena - before.arena >= BIG // 2, "from the heap, not mapped alone"
        del a
        assert _mallinfo().arena - before.arena >= BIG // 2, "kept on the heap for the next copy while the block runs"
    assert _mallinfo().arena - before.arena < BIG, "given back when the block ends (malloc_trim)"
    b = np.ones(BIG // 8)  # after the block: mapped on its own again, as glibc does by default
    assert _mallinfo().hblkhd - before.hblkhd >= BIG
    del b


def test_nested_blocks_keep_the_settings_until_the_outermost_ends() -> None:
    with heap.pandas_heap():
        with heap.pandas_heap() as inner:
            assert inner
        before = _mallinfo()
        a = np.ones(BIG // 8)
        assert _mallinfo().arena - before.arena >= BIG // 2, "the inner block's end did not reset the outer one's settings"
        del a


def _conf_after_import(order: str, env: dict[str, str]) -> str:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF", "DATALAB_POLARS_ALLOCATOR")}
    code = f"import {order}; import os; print(os.environ.get('_RJEM_MALLOC_CONF', ''))"
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_polars_keeps_freed_pages_longer_unless_the_operator_says_otherwise() -> None:
    import datalab

    # datalab first (every entry point): Polars' jemalloc gets the longer decay, appended last so it wins
    assert _conf_after_import("datalab, polars", {}).endswith("," + datalab.POLARS_ALLOCATOR)
    # the operator's own setting, or an explicit opt-out, is left alone
    assert _conf_after_import("datalab, polars", {"_RJEM_MALLOC_CONF": "narenas:2"}).endswith(",narenas:2")
    assert datalab.POLARS_ALLOCATOR not in _conf_after_import("datalab, polars", {"DATALAB_POLARS_ALLOCATOR": "default"})
    # Polars already loaded: too late to change, so not pretended
    assert datalab.POLARS_ALLOCATOR not in _conf_after_import("polars, datalab", {})
