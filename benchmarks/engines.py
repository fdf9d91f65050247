"""Curation on the CPU engine beside the GPU engine (cudf-polars): same delivery, same plan.

    .venv/bin/python benchmarks/engines.py --rows 50000000

Generates a bavaria-spindle delivery (every defect), pushes it into a
temporary lab (the push parses it once, into the raw table), then curates
it twice, each in its own process so that peak memory and cudf's import are
each run's own: ``DATALAB_ENGINE=cpu`` and ``DATALAB_ENGINE=gpu``. Prints,
side by side, curation wall time and rows/s, the engine's own time, peak
RSS, the device, any GPU fallback (the operation the GPU could not run),
and whether the two curated tables are equal (floats within ``REL_TOL``,
everything else exactly, the same rows in the same order).

Unlike ``run_all.py`` it needs neither Great Expectations nor Dagster: a
GPU machine with only the core's dependencies and cudf-polars runs it
(``scripts/gpu_device.sh``; docs/gpu.md). Where no GPU is usable the GPU
run still runs, falls back to the CPU and says why; the comparison then
checks the fallback path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"
REL_TOL = 1e-9


def worker(engine: str, delivery: str, out: Path) -> None:
    """Curate ``delivery`` with ``engine``; move the curated file to ``out``; print a RESULT line."""
    sys.path.insert(0, str(ROOT))
    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.engine import Engine, peak_rss_mb
    from datalab.timeseries import curate

    s = settings()
    c = contract.load_all(s.contracts_dir)[SPINDLE]
    t = time.perf_counter()
    st = curate.curate_delivery(c, delivery, Engine(engine), s)
    seconds = time.perf_counter() - t
    shutil.move(curate.curated_path(c, delivery, s), out)
    res = {"engine_asked": engine, "seconds": seconds, "rows_in": st.rows_in, "rows_out": st.rows_out,
           "buckets": st.series_buckets, "engine": st.engine, "peak_rss_mb": peak_rss_mb()}
    print("RESULT " + json.dumps(res, default=str), flush=True)


def run(engine: str, delivery: str, work: Path, env: dict[str, str]) -> dict[str, Any]:
    out = work / f"curated-{engine}.parquet"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--delivery", delivery, "--out", str(out)]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)  # the worker passes Engine(engine)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        return {"engine_asked": engine, "error": (p.stderr or p.stdout).strip().splitlines()[-5:]}
    res = json.loads(line.removeprefix("RESULT "))
    res["process_seconds"] = time.perf_counter() - t
    res["path"] = str(out)
    return res


def compare(a: Path, b: Path) -> str:
    """'equal', or what differs: the curated tables of the two engines."""
    import polars as pl
    from polars.testing import assert_frame_equal

    try:
        assert_frame_equal(pl.read_parquet(a), pl.read_parquet(b), check_exact=False, rel_tol=REL_TOL, abs_tol=0.0)
    except AssertionError as e:
        return "DIFFERENT: " + str(e).splitlines()[0][:300]
    return f"equal (floats within {REL_TOL:g} relative)"


def table(rows: int, lines: int, results: list[dict[str, Any]]) -> str:
    head = f"{'curation, ' + f'{rows:,} readings':<34}{'wall s':>9}{'rows/s':>13}{'engine s':>10}{'peak RSS MB':>13}  ran on"
    out = [head]
    for r in results:
        if "error" in r:
            out.append(f"{r['engine_asked']:<34} failed: {' | '.join(r['error'])}")
            continue
        eng = r["engine"]
        ran = f"{eng['engine']}: {eng['device']}" + (f"; fell back: {eng['fallback']}" if eng.get("fallback") else "")
        out.append(f"{'DATALAB_ENGINE=' + r['engine_asked']:<34}{r['seconds']:>9.2f}{lines / r['seconds']:>13,.0f}"
                   f"{eng['seconds']:>10.2f}{r['peak_rss_mb']:>13,.0f}  {ran}")
    ok = [r for r in results if "error" not in r]
    if len(ok) == 2 and ok[1]["engine"]["engine"] == "gpu":
        out.append(f"GPU engine: {ok[0]['seconds'] / ok[1]['seconds']:.1f}x the CPU engine's curation speed "
                   f"({ok[0]['engine']['seconds'] / ok[1]['engine']['seconds']:.1f}x on the plan alone)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="readings in the delivery (default 10,000,000)")
    ap.add_argument("--bucket-rows", type=int, help="DATALAB_CURATE_BUCKET_ROWS for both runs (default: the lab's, 8 M)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", choices=["cpu", "gpu"], help=argparse.SUPPRESS)
    ap.add_argument("--delivery", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, a.delivery, a.out)
        return 0
    work = Path(tempfile.mkdtemp(prefix="datalab-engines-"))
    env = {**os.environ, "DATALAB_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    if a.bucket_rows:
        env["DATALAB_CURATE_BUCKET_ROWS"] = str(a.bucket_rows)
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    try:
        from datalab.config import settings
        from datalab.contracts import contract
        from datalab.intake import landing
        from datalab.timeseries import sample

        c = contract.load_all(settings().contracts_dir)[SPINDLE]
        t = time.perf_counter()
        gen = sample.generate(c, a.rows, seed=42)
        path = sample.write(gen, work / "delivery.csv")
        lines = int(gen.truth["rows"])
        print(f"generated {a.rows:,} readings ({lines:,} lines) in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        t = time.perf_counter()
        rec = landing.push(c, [path])
        if not rec.accepted:
            print("the generated delivery was rejected: " + "; ".join(rec.reasons[:5]), file=sys.stderr)
            return 1
        print(f"pushed (parsed once into the raw table) in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        path.unlink()
        results = []
        for engine in ("cpu", "gpu"):
            results.append(run(engine, rec.delivery_id, work, env))
            r = results[-1]
            said = json.dumps(r["error"])[:300] if "error" in r else f"{r['seconds']:.1f} s ({r['engine']['engine']})"
            print(f"  curated with DATALAB_ENGINE={engine}: {said}", file=sys.stderr, flush=True)
        same = compare(Path(results[0]["path"]), Path(results[1]["path"])) if all("path" in r for r in results) else "not compared"
        print("\n" + table(a.rows, lines, results))
        print(f"curated tables of the two runs: {same}")
        if a.json:
            a.json.write_text(json.dumps({"rows": a.rows, "lines": lines, "results": results, "same": same}, indent=2, default=str))
        return 0 if same.startswith("equal") else 2
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
