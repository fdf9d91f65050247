"""Where the push's reader spends its time: the fast split of clean blocks beside the line path.

    .venv/bin/python benchmarks/reader_stages.py --rows 10000000
    .venv/bin/python benchmarks/reader_stages.py --input delivery.csv

Reads one spindle CSV with ``TimeseriesReader`` twice, each in its own
process (so peak memory is its own): once as the push does (clean blocks
split by Polars' CSV reader, ``text_blocks``), once with every block on the
line path (``fast_split=False``). Prints rows/s, MB/s, peak RSS and the
seconds spent in each reader step, side by side, plus a plain
``pl.read_csv`` of the same file as the floor (no line numbers, no checks).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"
STEPS = ("_split", "_cast_all", "_report_casts", "_required", "_parse_ts", "_typed_long")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) / 1024
    return 0.0


def worker(kind: str, path: Path) -> dict:
    import polars as pl

    from datalab.contracts import contract
    from datalab.intake import formats
    from datalab.timeseries import readers

    c = contract.load_all(ROOT / "data_contracts")[SPINDLE]
    t0 = time.perf_counter()
    if kind == "polars":
        rows = pl.read_csv(path, infer_schema=False, quote_char=None).height
        return {"rows": rows, "seconds": time.perf_counter() - t0, "steps": {}, "peak_mb": _peak_mb()}
    steps: dict[str, float] = defaultdict(float)
    for name in STEPS:
        real = getattr(readers.TimeseriesReader, name)

        def timed(self, *a, _real=real, _name=name, **k):
            t = time.perf_counter()
            try:
                return _real(self, *a, **k)
            finally:
                steps[_name] += time.perf_counter() - t

        setattr(readers.TimeseriesReader, name, timed)
    sn = formats.sniff(path, path.name, c.layout.delimiter)
    r = readers.TimeseriesReader(c, path, path.name, sn, fast_split=(kind == "fast"))
    rows = sum(len(b) for b in r.batches())
    assert not r.problems, r.problems.reasons()[:3]
    return {"rows": rows, "seconds": time.perf_counter() - t0, "steps": dict(steps), "peak_mb": _peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--input", type=Path, help="a spindle CSV generated earlier (skips generation)")
    ap.add_argument("--worker", choices=["fast", "lines", "polars"])
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, a.input)))
        return
    path = a.input
    if path is None:
        from datalab.contracts import contract
        from datalab.timeseries import sample

        c = contract.load_all(ROOT / "data_contracts")[SPINDLE]
        path = sample.write(sample.generate(c, a.rows, seed=42), Path(tempfile.mkdtemp(prefix="datalab-reader-")) / "delivery.csv")
    mb = path.stat().st_size / 1e6
    print(f"{path} ({mb:,.0f} MB)")
    res = {}
    for kind in ("fast", "lines", "polars"):
        p = subprocess.run([sys.executable, __file__, "--worker", kind, "--input", str(path)], stdout=subprocess.PIPE, text=True, check=True)
        res[kind] = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    labels = {"fast": "reader, clean blocks by Polars CSV", "lines": "reader, line path only", "polars": "pl.read_csv, text only (floor)"}
    print(f"\n{'':38}{'rows':>12}{'seconds':>9}{'rows/s':>12}{'MB/s':>8}{'peak MB':>9}  steps (s)")
    for kind, r in res.items():
        st = ", ".join(f"{k.strip('_')} {v:.2f}" for k, v in r["steps"].items())
        print(f"{labels[kind]:38}{r['rows']:>12,}{r['seconds']:>9.2f}{r['rows'] / r['seconds']:>12,.0f}"
              f"{mb / r['seconds']:>8.1f}{r['peak_mb']:>9,.0f}  {st}")


if __name__ == "__main__":
    main()
