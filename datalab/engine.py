"""The engine that runs a Polars plan, and the record of what ran it.

The curation plan is one LazyFrame; the engine decides where it runs: the
Polars GPU engine (RAPIDS cuDF through cudf-polars) when one is usable, else
the CPU (in-memory engine, one series bucket at a time), with the same result. ``DATALAB_ENGINE`` picks
auto | cpu | gpu. A GPU run is tried with ``raise_on_fail=True``; if the plan
cannot run there, it runs on the CPU and the failure is recorded, so a
fallback is always visible in the asset's metadata and the manifest.
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from datalab.config import settings


@dataclass
class EngineRun:
    engine: str  # "cpu" or "gpu"
    device: str
    seconds: float
    fallback: str | None = None  # why the GPU was not used, when it was asked for
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Resident memory of this process now (from /proc; the lifetime peak where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return peak_rss_mb()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryWatch:
    """Peak resident memory during one block of work, not the process's lifetime.

    A Dagster run materialises many partitions in one process, whose
    ``ru_maxrss`` only ever grows; sampling the resident size every
    ``interval`` seconds gives each materialisation its own peak (a spike
    shorter than the interval can be missed, so it is a lower bound).

    One sampler thread per process serves every watch open at the time
    (they nest: a delivery's step, and the engine's run inside it). A
    thread started and joined per watch, three per small delivery, was 3 %
    of a worker's time in ``benchmarks/processing.py``; the sampler waits,
    taking no CPU, while no watch is open.
    """

    _cond: ClassVar[threading.Condition] = threading.Condition()
    _open: ClassVar[set[MemoryWatch]] = set()
    _sampler: ClassVar[threading.Thread | None] = None

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0

    def __enter__(self) -> MemoryWatch:
        self.start_mb = self.peak_mb = rss_mb()
        cls = MemoryWatch
        with cls._cond:
            cls._open.add(self)
            if cls._sampler is None or not cls._sampler.is_alive():
                cls._sampler = threading.Thread(target=cls._sample, name="datalab-memwatch", daemon=True)
                cls._sampler.start()
            cls._cond.notify()
        return self

    @classmethod
    def _sample(cls) -> None:
        with cls._cond:
            while True:
                while not cls._open:
                    cls._cond.wait()
                cls._cond.wait(min(w.interval for w in cls._open))  # the lock is released while waiting
                if cls._open:
                    now = rss_mb()
                    for w in cls._open:
                        w.peak_mb = max(w.peak_mb, now)

    def __exit__(self, *exc: object) -> None:
        with MemoryWatch._cond:
            MemoryWatch._open.discard(self)
        self.peak_mb = max(self.peak_mb, rss_mb())

    @classmethod
    def _after_fork(cls) -> None:
        """In a forked child: no sampler runs there, and the lock may have been held at the fork."""
        cls._cond, cls._open, cls._sampler = threading.Condition(), set(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=MemoryWatch._after_fork)


@lru_cache(maxsize=1)
def gpu_status() -> tuple[bool, str]:
    """(usable, why) for the Polars GPU engine on this machine."""
    try:
        import cudf_polars  # noqa: F401
    except ImportError:
        return False, "cudf-polars is not installed (pip install 'datalab[gpu]')"
    try:
        pl.LazyFrame({"a": [1]}).select(pl.col("a") + 1).collect(engine=pl.GPUEngine(raise_on_fail=True))
    except Exception as e:  # no device, driver mismatch, ...
        return False, f"the GPU engine does not start here: {e}"
    return True, "ok"


# The curation plan sorts and runs window functions over whole series, which
# block the streaming engine anyway; on one bucket (at most
# DATALAB_CURATE_BUCKET_ROWS rows) the in-memory engine is faster and smaller
# than sink_parquet on the streaming engine (the measurements are in
# docs/performance.md, "Why the code is as it is"). Memory is bounded by the
# bucket, not by this choice.
CPU_ENGINE = "in-memory"
# zstd level of the curated files. Level 1 is what pyarrow writes by default,
# and so what the parts of a large delivery (``_PartWriter``) always had;
# Polars' default (3) took a third more time to write a small delivery's
# file, for files about an eighth smaller (docs/performance.md).
CURATED_ZSTD_LEVEL = 1
# Called with each result frame while it is in memory (see Engine.sink_parquet).
OnResult = Callable[[pl.DataFrame], None]


@dataclass(frozen=True)
class Twin:
    """A second file of a sink's rows, written in the same run: other constants, some text values renamed.

    The published form of a firm that withholds its name (its pseudonyms in
    the provenance columns and in ``entity``: datalab.policy.firm_names) is
    such a twin of the curated file. A delivery curated in one part writes
    it from the result while it is in memory (one more encoding of a small
    frame); one curated in parts gets it as a copy of the finished file
    with the renamed columns' dictionary pages rewritten
    (``datalab.parquet_rename``, through :func:`_write_twin`), where a
    second encoding of every row took a third of the curation's CPU.
    Publishing the firm's rows without a twin cost a read, a decode and an
    encoding (the measurements are in docs/performance.md, "Why the code
    is as it is").
    ``rename``: per text column, the function giving each distinct value's
    replacement (called once per value per part; nulls stay null).
    """

    path: Path
    constants: dict[str, str]
    rename: dict[str, Callable[[str], str]]

    @property
    def tmp(self) -> Path:
        """Where the twin is written before it is renamed to ``path`` (as the sink's own file)."""
        return self.path.with_suffix(".parquet.tmp")

    def arrow(self, tbl: Any) -> Any:
        """The twin of one result table (Arrow), before its constants are appended."""
        import pyarrow as pa
        import pyarrow.compute as pc

        for name, fn in self.rename.items():
            i = tbl.schema.get_field_index(name)
            enc = pc.dictionary_encode(tbl.column(i).combine_chunks())
            values = pa.array([fn(v) for v in enc.dictionary.to_pylist()], pa.string())
            tbl = tbl.set_column(i, name, pa.DictionaryArray.from_arrays(enc.indices, values))
        return tbl

    def renames(self) -> dict[str, Callable[[str], str]]:
        """Per column, each value's replacement in the twin: the renamed columns and the constants' new values."""
        return {**self.rename, **{k: (lambda _v, new=v: new) for k, v in self.constants.items()}}

    def frame(self, df: pl.DataFrame) -> pl.DataFrame:
        """The twin of one result frame (Polars), with its constants."""
        names = {n: {v: fn(v) for v in df.get_column(n).drop_nulls().unique().to_list()} for n, fn in self.rename.items()}
        return df.with_columns(*(pl.col(n).replace(m) for n, m in names.items()),
                               *(pl.lit(v, pl.String).alias(k) for k, v in self.constants.items()))


def one_value_column(value: str, rows: int, index: str = "int8") -> Any:
    """An Arrow column of ``rows`` times ``value``: a dictionary of one text and ``index`` indices, all zero.

    Written to Parquet it is the same dictionary-encoded text as a text
    column, without the writer hashing every row to find the one value. The
    indices are built from a zeroed buffer: pyarrow's ``fill_null`` and
    ``pa.array`` of Python values import pandas (0.3 s and 60 MB, once per
    process), which the push and the fast path otherwise never import.
    """
    import numpy as np
    import pyarrow as pa

    zeros = pa.Array.from_buffers(pa.type_for_alias(index), rows, [None, pa.py_buffer(np.zeros(rows, index))])
    text = pl.Series([value], dtype=pl.String).to_arrow(compat_level=pl.CompatLevel.oldest())
    return pa.DictionaryArray.from_arrays(zeros, text)


class Engine:
    """Runs LazyFrames on the chosen device and says what it did."""

    def __init__(self, mode: str | None = None):
        self.mode = (mode or settings().engine).lower()
        if self.mode not in ("auto", "cpu", "gpu"):
            raise ValueError(f"engine {self.mode!r}: use auto, cpu or gpu")

    def _want_gpu(self) -> tuple[bool, str | None]:
        if self.mode == "cpu":
            return False, None
        ok, why = gpu_status()
        if ok:
            return True, None
        return False, (why if self.mode == "gpu" else None)

    def tries_gpu(self) -> bool:
        """Whether a plan run now goes to the GPU first (plans then use only what cudf-polars implements)."""
        return self._want_gpu()[0]

    @staticmethod
    def _cpu_device() -> str:
        return f"cpu ({os.cpu_count()} cores, polars {pl.__version__} in-memory)"

    def collect(self, lf: pl.LazyFrame) -> tuple[pl.DataFrame, EngineRun]:
        with MemoryWatch() as mw:
            df, run = self._collect(lf)
        run.peak_rss_mb = round(mw.peak_mb, 1)
        return df, run

    def _collect(self, lf: pl.LazyFrame) -> tuple[pl.DataFrame, EngineRun]:
        t0 = time.perf_counter()
        use_gpu, fallback = self._want_gpu()
        if use_gpu:
            try:
                df = lf.collect(engine=pl.GPUEngine(raise_on_fail=True))
                return df, EngineRun("gpu", _gpu_name(), time.perf_counter() - t0, None, peak_rss_mb())
            except Exception as e:
                fallback = f"plan not supported on the GPU: {str(e).splitlines()[0][:300]}"
        df = lf.collect(engine=CPU_ENGINE)
        return df, EngineRun("cpu", self._cpu_device(), time.perf_counter() - t0, fallback, peak_rss_mb())

    def sink_parquet(self, lf: pl.LazyFrame, path: Path, constants: dict[str, str] | None = None,
                     on_result: OnResult | None = None, twin: Twin | None = None,
                     on_written: OnResult | None = None) -> EngineRun:
        """Run ``lf`` and write it to ``path`` atomically (tmp file, then rename).

        ``constants``: string columns appended with one value on every row
        (provenance); added to the result, not to the plan. ``on_result``
        sees the result (without them) while it is in memory, before it is
        written: counting there costs no second read of the file.
        ``on_written`` sees the frame the file holds (with them), once it is
        in place: a check that follows reads it from memory, not the file.
        ``twin``: a second file of the same rows (:class:`Twin`), written too.
        """
        with MemoryWatch() as mw:
            run = self._sink_parquet(lf, path, constants or {}, on_result, twin, on_written)
        run.peak_rss_mb = round(mw.peak_mb, 1)
        return run

    def _sink_parquet(self, lf: pl.LazyFrame, path: Path, constants: dict[str, str],
                      on_result: OnResult | None = None, twin: Twin | None = None,
                      on_written: OnResult | None = None) -> EngineRun:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        t0 = time.perf_counter()
        lits = [pl.lit(v, pl.String).alias(k) for k, v in constants.items()]
        use_gpu, fallback = self._want_gpu()
        df: pl.DataFrame | None = None
        if use_gpu:
            try:
                df = lf.collect(engine=pl.GPUEngine(raise_on_fail=True))
            except Exception as e:
                fallback = f"plan not supported on the GPU: {str(e).splitlines()[0][:300]}"
        on_gpu = df is not None
        if df is None:
            df = lf.collect(engine=CPU_ENGINE)
        # Only the plan falls back to the CPU; counting and writing happen
        # once, whichever engine ran it.
        if on_result is not None:
            on_result(df)
        tmps = [tmp, *([twin.tmp] if twin is not None else [])]
        written = df.with_columns(lits)
        try:
            written.write_parquet(tmp, compression_level=CURATED_ZSTD_LEVEL, statistics=True)
            if twin is not None:
                twin.frame(df).write_parquet(twin.tmp, compression_level=CURATED_ZSTD_LEVEL, statistics=True)
                os.replace(twin.tmp, twin.path)
            os.replace(tmp, path)
        except BaseException:
            for t in tmps:
                t.unlink(missing_ok=True)
            raise
        if on_written is not None:
            on_written(written)
        if on_gpu:
            return EngineRun("gpu", _gpu_name(), time.perf_counter() - t0, None, peak_rss_mb())
        return EngineRun("cpu", self._cpu_device(), time.perf_counter() - t0, fallback, peak_rss_mb())

    def sink_parquet_parts(self, plans: list[pl.LazyFrame], path: Path, constants: dict[str, str] | None = None,
                           on_result: OnResult | None = None, twin: Twin | None = None,
                           on_part: OnResult | None = None) -> EngineRun:
        """Run ``plans`` one after the other and write their results, in order, to one Parquet file.

        Used for deliveries larger than one curation bucket: at most two
        parts' results are in memory at a time, the one being computed and
        the one being written (``_PartWriter``). The run counts as GPU only
        if every part ran there; the first fallback reason is kept.
        ``constants`` and ``on_result`` (called for each part, in order) as
        for :meth:`sink_parquet`; the ``twin`` is made from the finished file (:func:`_write_twin`).
        ``on_part`` sees each part as the file holds it (constants included),
        after it went to the writer: it runs beside the part's encoding
        (the suite's evaluation, ``validate.PartSuite``), and the last
        part's beside the writer's tail instead of after it.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        tmps = [tmp, *([twin.tmp] if twin is not None else [])]
        t0 = time.perf_counter()
        runs: list[EngineRun] = []
        mw = MemoryWatch().__enter__()
        try:
            with _PartWriter(tmp, constants or {}) as writer:
                for lf in plans:
                    df, r = self.collect(lf)
                    runs.append(r)
                    if on_result is not None:
                        on_result(df)
                    # Arrow string views, as Polars holds them: no copy into
                    # large strings, which cost time on every part (measured
                    # in docs/performance.md); the Parquet written is the
                    # same (plain UTF-8 columns).
                    tbl = df.to_arrow(compat_level=pl.CompatLevel.newest())
                    writer.put(tbl)
                    if on_part is not None:
                        on_part(df.with_columns(pl.lit(v, pl.String).alias(k) for k, v in (constants or {}).items()))
                    del df, tbl
            if twin is not None:
                _write_twin(tmp, twin, set(constants or {}))
        except BaseException:
            for t in tmps:
                t.unlink(missing_ok=True)
            raise
        finally:
            mw.__exit__()
        if twin is not None:
            os.replace(twin.tmp, twin.path)
        os.replace(tmp, path)
        gpu = bool(runs) and all(r.engine == "gpu" for r in runs)
        fallback = next((r.fallback for r in runs if r.fallback), None)
        device = runs[0].device if runs else self._cpu_device()
        return EngineRun("gpu" if gpu else "cpu", f"{device}, {len(plans)} buckets", time.perf_counter() - t0, fallback, round(mw.peak_mb, 1))


def parquet_encodings(schema: Any) -> dict[str, Any]:
    """pyarrow ParquetWriter options for curated rows: which columns get dictionaries, which deltas.

    pyarrow's default tries a dictionary for every column. Text and numbers
    repeat (units, sensor names; readings of a quantised sensor), so they
    keep it. Times and integers in a series' order hardly repeat: the writer
    hashed every timestamp into a dictionary it then gave up (plain after
    1 MB), and zstd squeezed what was left. A delta encoding stores a sorted
    series' times in a few bits a row: the time column of a 10 M-row
    delivery went from 39 MB to under 1 MB, the file from 91 to 57 MB, and
    both writing and reading it cost less (docs/performance.md, "Why the
    code is as it is"). Every Parquet reader the lab meets (pyarrow, Polars, DuckDB,
    cudf) reads both encodings.
    """
    import pyarrow as pa

    dictionary: list[str] = []
    delta: dict[str, str] = {}
    for f in schema:
        t = f.type
        if pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t) \
                or pa.types.is_duration(t):
            delta[f.name] = "DELTA_BINARY_PACKED"
        elif not pa.types.is_boolean(f.type):
            dictionary.append(f.name)
    return {"use_dictionary": dictionary, "column_encoding": delta}


def _write_twin(path: Path, twin: Twin, constants: set[str]) -> None:
    """The twin of the finished file ``path``: its dictionary pages renamed, or (where that cannot be) its rows rewritten.

    The rows of a part file are dictionary-encoded text where the twin
    differs (``parquet_rename``): renaming the dictionaries costs
    milliseconds where encoding every row a second time took a third of a
    large curation's CPU (docs/performance.md). A file the renaming does not
    take (a machine id column that outgrew its dictionary) is read back row
    group by row group and written the twin's way, as before.
    """
    from datalab import parquet_rename

    try:
        parquet_rename.renamed_copy(path, twin.tmp, twin.renames())
        return
    except parquet_rename.NotRenamable:
        pass
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    with _PartWriter(twin.tmp, twin.constants, twin.arrow) as out:
        for i in range(f.metadata.num_row_groups):
            out.put(f.read_row_group(i).drop_columns([c for c in constants if c in f.schema_arrow.names]))


class _PartWriter:
    """Writes curated parts to one Parquet file on a thread, while the next part is computed.

    pyarrow's writer encodes on one core (a large share of a delivery's
    curation) and releases the GIL; with the write of part k
    overlapping the plan of part k+1, at most one finished part waits in
    memory beside the one being computed (the queue holds one).

    Constant columns are appended here as dictionary arrays (one byte per
    row). Added to the Polars frame, each became a 16-byte-per-row string
    column in Arrow, which raised the peak considerably (the measurements
    are in docs/performance.md, "Why the code is as it is"). The file
    is written without the Arrow schema (``store_schema=False``), so readers
    see plain strings, as in a file Polars writes, not dictionaries
    (Categorical); the Parquet types of the other columns carry everything
    else (UTC timestamps, unsigned integers).
    """

    def __init__(self, path: Path, constants: dict[str, str] | None = None,
                 transform: Callable[[Any], Any] | None = None):
        self.path = path
        self.constants = constants or {}
        self.transform = transform  # applied to each part first, on this writer's thread (Twin.arrow)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="datalab-part-writer", daemon=True)

    def __enter__(self) -> _PartWriter:
        # Imported here, on the caller's thread: GX may be importing on
        # another thread (validate.import_in_background), and imports of
        # shared modules on two threads at once are best avoided.
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa, self._pq = pa, pq
        self._thread.start()
        return self

    def _run(self) -> None:
        pq = self._pq
        writer: Any = None
        try:
            while (tbl := self._q.get()) is not None:
                if self.transform is not None:
                    tbl = self.transform(tbl)
                for name, value in self.constants.items():
                    tbl = tbl.append_column(name, one_value_column(value, tbl.num_rows))
                if writer is None:
                    writer = pq.ParquetWriter(self.path, tbl.schema, compression="zstd", compression_level=CURATED_ZSTD_LEVEL,
                                              store_schema=False, **parquet_encodings(tbl.schema))
                writer.write_table(tbl, row_group_size=1_000_000)
                del tbl
        except BaseException as e:  # reported to the caller by put() or __exit__
            self._error = e
            while self._q.get() is not None:  # drain, so that put() never blocks
                pass
        finally:
            if writer is not None:
                writer.close()

    def put(self, tbl: Any) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(tbl)

    def __exit__(self, *exc: object) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def _gpu_name() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return f"gpu ({props['name'].decode()}, cudf-polars)"
    except Exception:
        return "gpu (cudf-polars)"
