"""glibc heap settings around validation (datalab.heap), observed with glibc's own mallinfo2."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from datalab import heap


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
        assert inside.hblkhd - before.hblkhd < BIG and inside.arena - before.arena >= BIG, "from the heap, not mapped alone"
        del a
        assert _mallinfo().arena - before.arena >= BIG, "kept on the heap for the next copy while the block runs"
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
        assert _mallinfo().arena - before.arena >= BIG, "the inner block's end did not reset the outer one's settings"
        del a
