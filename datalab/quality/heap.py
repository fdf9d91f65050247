"""glibc's malloc settings for the pandas-heavy step (validation).

Great Expectations' pandas engine copies columns of a chunk again and again
(boolean masks, ``take``, factorize tables of millions of rows). pandas and
numpy allocate with glibc's malloc, which hands blocks above its mmap
threshold to the kernel one by one and gives the top of the heap back once
more than the trim threshold is free: every copy then faults its pages in
afresh, and validation spends much of its time in the kernel. Keeping
large blocks on the heap while the suite runs makes validation faster at a
little more peak memory (the measurements are in docs/performance.md,
"Why the code is as it is").

:func:`pandas_heap` raises both thresholds for the duration of a block and
afterwards gives the free heap back (``malloc_trim``) and leaves the
thresholds where glibc's own dynamic adjustment takes them after large
frees (32 MB and twice that), so a long-running process does not keep what
the block freed. Polars and pyarrow allocate with their own allocators and
are not affected. Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# While the block runs: blocks up to 256 MB come from the heap, and up to
# 512 MB of free heap is kept for the next copy.
BLOCK_MMAP = 256 << 20
BLOCK_TRIM = 512 << 20
# After it: glibc's own ceiling for its dynamic mmap threshold on 64-bit
# (DEFAULT_MMAP_THRESHOLD_MAX), and the trim threshold it pairs with it.
AFTER_MMAP = 32 << 20
AFTER_TRIM = 64 << 20

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version: only glibc has it (mallopt's numbers are glibc's)
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return libc


_LIBC = _glibc()


def _set(mmap: int, trim: int) -> bool:
    assert _LIBC is not None
    ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(min(mmap, 2**31 - 1))))
    if not ok:  # an older glibc caps the mmap threshold at 32 MB
        ok = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(AFTER_MMAP)))
    return ok and bool(_LIBC.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(min(trim, 2**31 - 1))))


@contextlib.contextmanager
def pandas_heap() -> Iterator[bool]:
    """Keep large blocks on glibc's heap during the block; give them back after. Yields whether it applied."""
    global _depth
    if _LIBC is None:
        yield False
        return
    with _lock:
        _depth += 1
        applied = _set(BLOCK_MMAP, BLOCK_TRIM) if _depth == 1 else True
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(AFTER_MMAP, AFTER_TRIM)
                _LIBC.malloc_trim(ctypes.c_size_t(0))


__all__ = ["pandas_heap"]
