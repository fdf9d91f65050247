"""Two hot paths of a large delivery, each beside the way it was done before (issue 21).

    .venv/bin/python benchmarks/hot_paths.py --rows 10000000 [--repeat 3]

* ``stage``: the push's copy of a pushed file into staging while hashing it
  (``intake.landing._stage``): copied by the kernel (``copy_file_range``)
  and hashed from the copy behind it on a thread (now), against the copy
  through the process with the hash on its own thread over a ring of reused
  1 MB buffers (``_Hasher``, the copy where the kernel cannot make it), one
  reused buffer hashed and written in turn on one thread (two sessions
  before), and a fresh 8 MB ``bytes`` per read (before that), on a
  generated text file of about 54 bytes a reading (the spindle CSV's size).
* ``keys``: a compound key's repeated rows on a long table of readings
  (entity, time, sensor: a few series, 1 % of the keys repeated), as the
  suite's ``expect_compound_columns_to_be_unique`` finds them: one hash of
  the three columns as a struct (before), repeated times within each series
  (``quality.fast._repeated_keys``), neighbours in a table grouped by series
  (``quality.fast._adjacent_repeats``, a curated part). All three must find
  the same rows.

Prints seconds, rows/s and MB/s of each, best of ``--repeat`` (for the
copy also its slowest run: the fresh buffers' cost shows as spread, when the
page cache is writing back), and the process's peak RSS; the variants
alternate so the machine's noise falls on all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _stage_fresh(src: Path, dst: Path) -> str:
    """The copy as it was: a new 8 MB bytes object per read."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(8 << 20):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def _stage_one_thread(src: Path, dst: Path) -> str:
    """The copy of the session before: one reused 1 MB buffer, hashed then written, on one thread."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
    return h.hexdigest()


def _stage_ring(src: Path, dst: Path) -> str:
    """The copy through the process, hashed on its own thread (``_Hasher``): the kernel's copy refused."""
    import errno

    from datalab.intake import landing

    real = getattr(os, "copy_file_range", None)

    def refuse(*a: object) -> int:
        raise OSError(errno.ENOSYS, "refused by the benchmark")

    os.copy_file_range = refuse  # type: ignore[attr-defined]
    try:
        sha, _, _ = landing._stage(src, dst, 1 << 62, src.name, None)
    finally:
        if real is not None:
            os.copy_file_range = real  # type: ignore[attr-defined]
    return sha


def _stage_now(src: Path, dst: Path) -> str:
    from datalab.intake import landing

    sha, _, _ = landing._stage(src, dst, 1 << 62, src.name, None)
    return sha


def _text_file(path: Path, rows: int) -> Path:
    """About 54 bytes a line, like the spindle CSV; written in blocks, not held whole."""
    line = b"BSW-M01,2026-01-05T00:00:04Z,oil_pressure,84.016,bar\n"
    block = line * 100_000
    with open(path, "wb") as f:
        for _ in range(rows // 100_000):
            f.write(block)
        f.write(line * (rows % 100_000))
    return path


def _keys_table(rows: int):
    """Readings of 4 machines x 4 sensors in series order, 1 % of the keys repeated next to their twin."""
    import polars as pl

    per = rows // 16
    base = pl.DataFrame({"i": pl.int_range(0, per, eager=True)}).with_columns(
        time=pl.datetime(2026, 1, 5, time_zone="UTC") + pl.duration(seconds=pl.col("i")))
    frames = [base.with_columns(entity=pl.lit(f"BSW-M0{e}"), sensor=pl.lit(s))
              for s in ("oil_pressure", "spindle_speed", "spindle_temp", "vibration") for e in range(1, 5)]
    df = pl.concat(frames).drop("i")
    # every 100th reading repeats the key of the one before it (a key duplicate, next to its twin)
    i = pl.int_range(pl.len())
    return df.with_columns(time=pl.when(i % 100 == 1).then(pl.col("time").shift(1)).otherwise(pl.col("time")))


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import polars as pl

    from datalab.quality import fast

    print(f"{'':44}{'seconds':>9}{'rows/s':>14}{'MB/s':>9}   (best; the copy's slowest run after it)")
    with tempfile.TemporaryDirectory(prefix="datalab-hot-") as tmp:
        src = _text_file(Path(tmp) / "delivery.csv", a.rows)
        mb = src.stat().st_size / 1e6
        results: dict[str, list[float]] = {"fresh": [], "one": [], "ring": [], "now": []}
        shas = set()
        for _ in range(a.repeat):  # alternating, each into a new file, dirty pages flushed first
            for name, fn in (("fresh", _stage_fresh), ("one", _stage_one_thread), ("ring", _stage_ring), ("now", _stage_now)):
                os.sync()
                dst = Path(tmp) / f"staged-{name}"
                t = time.perf_counter()
                shas.add(fn(src, dst))
                results[name].append(time.perf_counter() - t)
                dst.unlink()
        assert len(shas) == 1, "the copies hashed different bytes"
        for name, label in (("fresh", "stage: fresh 8 MB reads (before)"), ("one", "stage: one 1 MB buffer, one thread (before)"),
                            ("ring", "stage: hashed on its own thread (before)"),
                            ("now", "stage: kernel copy, hashed behind (now)")):
            s = min(results[name])
            print(f"{label:44}{s:>9.3f}{a.rows / s:>14,.0f}{mb / s:>9.1f}   slowest {max(results[name]):.3f} s")

    df = _keys_table(a.rows)
    cols = ["entity", "time", "sensor"]
    keep = ~pl.all_horizontal([pl.col(c).is_null() for c in cols])
    dtypes = [df.schema[c] for c in cols]
    ways = {
        "keys: struct hash of every row (before)": pl.struct(cols).filter(keep).is_duplicated().sum(),
        "keys: repeated times within a series": fast._repeated_keys(cols, dtypes, keep).sum(),
        "keys: neighbours, grouped by series": fast._adjacent_repeats(cols).sum(),
    }
    mb = df.estimated_size() / 1e6
    found = set()
    for label, expr in ways.items():
        s, n = _timed(lambda e=expr: df.select(e).item(), a.repeat)
        found.add(n)
        print(f"{label:44}{s:>9.3f}{df.height / s:>14,.0f}{mb / s:>9.1f}")
    assert len(found) == 1, f"the ways found different rows: {found}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{df.height:,} readings, {next(iter(found)):,} in repeated keys; peak RSS {peak:,.0f} MB (pid {os.getpid()})")


if __name__ == "__main__":
    main()
