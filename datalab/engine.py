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
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

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
    ``ru_maxrss`` only ever grows; a thread sampling the resident size every
    ``interval`` seconds gives each materialisation its own peak (a spike
    shorter than the interval can be missed, so it is a lower bound).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryWatch:
        self.start_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._run, name="datalab-memwatch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


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
# DATALAB_CURATE_BUCKET_ROWS rows) the in-memory engine is faster and smaller:
# 10 M rows in 7.4 s at 3.9 GB peak, against 11.5 s at 4.4 GB for
# sink_parquet on the streaming engine (polars 1.44, 2 cores). Memory is
# bounded by the bucket, not by this choice.
CPU_ENGINE = "in-memory"


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

    def sink_parquet(self, lf: pl.LazyFrame, path: Path, constants: dict[str, str] | None = None) -> EngineRun:
        """Run ``lf`` and write it to ``path`` atomically (tmp file, then rename).

        ``constants``: string columns appended with one value on every row
        (provenance); added to the result, not to the plan.
        """
        with MemoryWatch() as mw:
            run = self._sink_parquet(lf, path, constants or {})
        run.peak_rss_mb = round(mw.peak_mb, 1)
        return run

    def _sink_parquet(self, lf: pl.LazyFrame, path: Path, constants: dict[str, str]) -> EngineRun:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        t0 = time.perf_counter()
        lits = [pl.lit(v, pl.String).alias(k) for k, v in constants.items()]
        use_gpu, fallback = self._want_gpu()
        if use_gpu:
            try:
                lf.collect(engine=pl.GPUEngine(raise_on_fail=True)).with_columns(lits).write_parquet(tmp, statistics=True)
                os.replace(tmp, path)
                return EngineRun("gpu", _gpu_name(), time.perf_counter() - t0, None, peak_rss_mb())
            except Exception as e:
                fallback = f"plan not supported on the GPU: {str(e).splitlines()[0][:300]}"
        lf.collect(engine=CPU_ENGINE).with_columns(lits).write_parquet(tmp, statistics=True)
        os.replace(tmp, path)
        return EngineRun("cpu", self._cpu_device(), time.perf_counter() - t0, fallback, peak_rss_mb())

    def sink_parquet_parts(self, plans: list[pl.LazyFrame], path: Path, constants: dict[str, str] | None = None) -> EngineRun:
        """Run ``plans`` one after the other and write their results, in order, to one Parquet file.

        Used for deliveries larger than one curation bucket. The parts are
        the batches of a Polars IO source (``register_io_source``) that
        Polars' streaming Parquet sink writes: each part is computed when the
        sink asks for it, so about one part's result is in memory at a time,
        and Polars encodes on every core. Until the fourth round a pyarrow
        writer on a thread did this; it encodes on one core and took 3.8 s
        per 5 M rows (plus 0.6 s to convert to Arrow), against 1.8 s for
        Polars, and curation waited 5.6 s for it after the last part at
        10 M rows. The run counts as GPU only if every part ran there; the
        first fallback reason is kept. ``constants`` as for
        :meth:`sink_parquet`. A part that fails, or whose columns differ from
        the first part's, fails the run with its own error and leaves no file.
        """
        if not plans:
            raise ValueError("sink_parquet_parts: no plan to run")
        from polars.io.plugins import register_io_source

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        t0 = time.perf_counter()
        runs: list[EngineRun] = []
        failed: list[BaseException] = []
        lits = [pl.lit(v, pl.String).alias(k) for k, v in (constants or {}).items()]
        schema = pl.Schema({**plans[0].collect_schema(), **{k: pl.String for k in (constants or {})}})

        def parts(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
                  batch_size: int | None) -> Iterator[pl.DataFrame]:
            for k, lf in enumerate(plans):
                try:
                    df, r = self.collect(lf)
                    df = df.with_columns(lits)
                    if df.schema != schema:
                        raise ValueError(f"curation part {k + 1} of {len(plans)}: its schema {dict(df.schema)} "
                                         f"differs from the first part's {dict(schema)}")
                except BaseException as e:  # re-raised as it is by the caller, not as Polars wraps it
                    failed.append(e)
                    raise
                runs.append(r)
                if predicate is not None:
                    df = df.filter(predicate)
                yield df.select(with_columns) if with_columns is not None else df
                del df

        mw = MemoryWatch().__enter__()
        try:
            register_io_source(io_source=parts, schema=schema).sink_parquet(
                tmp, compression="zstd", statistics=True, row_group_size=1_000_000)
        except BaseException:
            tmp.unlink(missing_ok=True)
            if failed:
                raise failed[0] from None
            raise
        finally:
            mw.__exit__()
        os.replace(tmp, path)
        gpu = bool(runs) and all(r.engine == "gpu" for r in runs)
        fallback = next((r.fallback for r in runs if r.fallback), None)
        device = runs[0].device if runs else self._cpu_device()
        return EngineRun("gpu" if gpu else "cpu", f"{device}, {len(plans)} buckets", time.perf_counter() - t0, fallback, round(mw.peak_mb, 1))


def _gpu_name() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return f"gpu ({props['name'].decode()}, cudf-polars)"
    except Exception:
        return "gpu (cudf-polars)"
