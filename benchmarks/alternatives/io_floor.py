"""The I/O floor: the delivery's CSV read and written again as zstd Parquet, and nothing else.

No curation, no checks, no versioning: what any tool must at least do with
this file on this machine. pyarrow's CSV reader parses on every core (types
inferred) and its writer compresses with zstd. Issue 21 set datalab's target
against it (push -> published within 2.5x of this floor at 10 M rows).

    .venv/bin/python benchmarks/alternatives/io_floor.py delivery.csv out.parquet
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq


def run(path: Path, out: Path) -> dict:
    """Read ``path`` (CSV) and write ``out`` (zstd Parquet); rows and the two stages' seconds."""
    stages: dict[str, float] = {}
    t = time.perf_counter()
    table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=True))
    stages["read"] = time.perf_counter() - t
    t = time.perf_counter()
    pq.write_table(table, out, compression="zstd")
    stages["write"] = time.perf_counter() - t
    return {
        "tool": "io_floor", "input": str(path), "output": str(out), "rows_in": table.num_rows, "rows_out": table.num_rows,
        "floor": True,  # not a curation: no counts to compare with datalab's
        "validation": {"success": True, "expectations": 0, "failed": [], "checks": []},
        "stages": {k: round(v, 4) for k, v in stages.items()}, "seconds": round(sum(stages.values()), 4),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: io_floor.py DELIVERY.csv OUT.parquet")
    res = run(Path(sys.argv[1]), Path(sys.argv[2]))
    res["validation"].pop("checks")
    print(json.dumps(res, indent=2))
