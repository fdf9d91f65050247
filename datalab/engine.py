"""The engine that runs a Polars plan, and the record of what ran it.

The curation plan is one LazyFrame; the engine decides where it runs: the
Polars GPU engine (RAPIDS cuDF through cudf-polars) when one is usable, else
the CPU streaming engine, with the same result. ``DATALAB_ENGINE`` picks
auto | cpu | gpu. A GPU run is tried with ``raise_on_fail=True``; if the plan
cannot run there, it runs on the CPU and the failure is recorded, so a
fallback is always visible in the asset's metadata and the manifest.
"""

from __future__ import annotations

import os
import resource
import time
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
        return f"cpu ({os.cpu_count()} cores, polars {pl.__version__} streaming)"

    def collect(self, lf: pl.LazyFrame) -> tuple[pl.DataFrame, EngineRun]:
        t0 = time.perf_counter()
        use_gpu, fallback = self._want_gpu()
        if use_gpu:
            try:
                df = lf.collect(engine=pl.GPUEngine(raise_on_fail=True))
                return df, EngineRun("gpu", _gpu_name(), time.perf_counter() - t0, None, peak_rss_mb())
            except Exception as e:
                fallback = f"plan not supported on the GPU: {str(e).splitlines()[0][:300]}"
        df = lf.collect(engine="streaming")
        return df, EngineRun("cpu", self._cpu_device(), time.perf_counter() - t0, fallback, peak_rss_mb())

    def sink_parquet(self, lf: pl.LazyFrame, path: Path) -> EngineRun:
        """Run ``lf`` and write it to ``path`` atomically (tmp file, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        t0 = time.perf_counter()
        use_gpu, fallback = self._want_gpu()
        if use_gpu:
            try:
                lf.collect(engine=pl.GPUEngine(raise_on_fail=True)).write_parquet(tmp, statistics=True)
                os.replace(tmp, path)
                return EngineRun("gpu", _gpu_name(), time.perf_counter() - t0, None, peak_rss_mb())
            except Exception as e:
                fallback = f"plan not supported on the GPU: {str(e).splitlines()[0][:300]}"
        lf.sink_parquet(tmp, statistics=True, engine="streaming")
        os.replace(tmp, path)
        return EngineRun("cpu", self._cpu_device(), time.perf_counter() - t0, fallback, peak_rss_mb())


def _gpu_name() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return f"gpu ({props['name'].decode()}, cudf-polars)"
    except Exception:
        return "gpu (cudf-polars)"
