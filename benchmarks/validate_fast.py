"""Validation of one curated delivery with the Polars fast path and with GX (issue 21).

    PYTHONPATH=. .venv/bin/python benchmarks/validate_fast.py --rows 10000000 [--repeat 2]

Generates a spindle delivery of ``--rows`` readings (the same generator as
``benchmarks/run_all.py``), pushes, ingests and curates it once in a temporary lab,
then times ``validate()`` on the curated Parquet file in a fresh interpreter per engine
and run (``DATALAB_VALIDATE_ENGINE=fast`` or ``gx``), so the GX figure includes what a
curated asset pays: GX's import and context, the pandas copy and the (chunked) suite.
Each child also times a second ``validate()`` in the same process (GX already imported).
Prints one JSON line per run and a summary; checks that both engines give the same results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"
RUN_KEYS = {"seconds", "notes", "engine", "docs_path", "report_path", "run_name"}

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from datalab.config import settings
from datalab.contracts import contract
from datalab.quality import validate
c = contract.load_all(settings().contracts_dir)[{spindle!r}]
t1 = time.perf_counter()
first = validate.validate(c, {path!r}, run_name="bench-first", build_docs=False)
t2 = time.perf_counter()
second = validate.validate(c, {path!r}, run_name="bench-second", build_docs=False)
t3 = time.perf_counter()
d = first.to_dict()
print(json.dumps({{"engine": first.engine, "rows": first.rows, "success": first.success, "failed": first.failed,
                  "validate_s": round(t2 - t1, 3), "again_s": round(t3 - t2, 3), "process_s": round(t3 - t0, 3),
                  "gx_loaded": "great_expectations" in sys.modules, "pandas_loaded": "pandas" in sys.modules,
                  "report": {{k: v for k, v in d.items() if k not in {run_keys!r}}}}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dl-valbench-"))
    env = {**os.environ, "DATALAB_HOME": str(work / "lab"), "DATALAB_CONTRACTS": str(ROOT / "data_contracts"),
           "PYTHONPATH": str(ROOT)}
    os.environ.update(env)
    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.timeseries import curate, ingest, sample

    c = contract.load_all(settings().contracts_dir)[SPINDLE]
    t = time.perf_counter()
    gen = sample.generate(c, a.rows, seed=1)
    src = sample.write(gen, work / "spindle.csv")
    del gen
    rec = landing.push(c, [src])
    assert rec.accepted, rec.reasons
    ingest.ingest_raw(c, rec.delivery_id)
    st = curate.curate_delivery(c, rec.delivery_id)
    path = curate.curated_path(c, rec.delivery_id, settings())
    print(f"curated {st.rows_out:,} rows in {time.perf_counter() - t:.0f} s: {path}", file=sys.stderr, flush=True)
    runs: dict[str, list[dict]] = {"fast": [], "gx": []}
    for _ in range(a.repeat):
        for engine in ("fast", "gx"):
            code = CHILD.format(spindle=SPINDLE, path=str(path), run_keys=sorted(RUN_KEYS))
            out = subprocess.run([sys.executable, "-c", code], env={**env, "DATALAB_VALIDATE_ENGINE": engine},
                                 capture_output=True, text=True, cwd=ROOT, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[engine].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "report"}), flush=True)
    same = runs["fast"][0]["report"]["results"] == runs["gx"][0]["report"]["results"]
    for engine, rs in runs.items():
        best = min(r["validate_s"] for r in rs)
        print(f"{engine:5} validate() best of {len(rs)}: {best:.2f} s (fresh process), again in-process "
              f"{min(r['again_s'] for r in rs):.2f} s, rows {rs[0]['rows']:,}, engine {rs[0]['engine']}")
    # The chunked GX run lists its samples per chunk (sensor order), so samples may differ; counts may not.
    keys = ("type", "success", "unexpected_count", "element_count", "missing_count", "observed_value")
    counts_same = ([{k: r[k] for k in keys} for r in runs["fast"][0]["report"]["results"]]
                   == [{k: r[k] for k in keys} for r in runs["gx"][0]["report"]["results"]])
    print(f"same results: {same}; same verdicts and counts: {counts_same}")
    return 0 if counts_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
