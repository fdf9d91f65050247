"""Push -> published version for one large delivery, beside a plain Polars script.

    .venv/bin/python benchmarks/e2e.py --rows 10000000

Generates a bavaria-spindle delivery (long CSV with every defect), then runs,
each in its own process so peak memory is its own:

* ``datalab``: push (hash + structure check), raw ingest, curation plan,
  Great Expectations suite, Iceberg publish; wall time per stage;
* ``polars``: a plain Polars script doing the same curation (parse, UTC,
  exact de-duplication, unit conversion, range and key-duplicate flags) and
  writing Parquet, without checks, receipts, validation or versioning.

Prints rows/s, MB/s and peak RSS for each, side by side.

``--warm`` runs datalab in a warm process: the lab imported and its contracts
loaded before the timer starts, as the running service has done when a
delivery arrives (``datalab.warm``); the default is a fresh process with all
of that timed. Say which one a figure is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This checkout's datalab, not whichever one the environment's editable install
# names: a benchmark run from a second worktree (an old commit beside the new
# one, sharing one .venv) must measure that worktree's code. Without this the
# worker process imported the install's checkout on both sides of such a pair.
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"


def rss_mb() -> float:
    """This process's own peak resident size in MB.

    Read from VmHWM: on Linux ``ru_maxrss`` of a child starts from its
    parent's peak (kept across fork and exec), so a worker spawned after the
    generator held 50 M rows would report the generator's peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """This process's CPU time so far, user and system, all threads (Polars', the writers')."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_datalab(path: Path | list[Path]) -> dict:
    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.quality import validate
    from datalab.store import publish
    from datalab.timeseries import curate, ingest

    s = settings()
    c = contract.load_all(s.contracts_dir)[SPINDLE]
    stages: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of the process (all its threads) per stage
    cpu_at = [cpu_s()]

    def done(stage: str, t0: float) -> None:
        stages[stage] = time.perf_counter() - t0
        now = cpu_s()
        cpu[stage], cpu_at[0] = now - cpu_at[0], now
        cores = cpu[stage] / stages[stage] if stages[stage] > 0 else 0.0
        print(f"  datalab {stage}: {stages[stage]:.2f} s, {cpu[stage]:.2f} s of CPU ({cores:.1f} cores; "
              f"peak RSS so far {rss_mb():,.0f} MB)", file=sys.stderr, flush=True)

    t = time.perf_counter()
    rec = landing.push(c, list(path) if isinstance(path, list) else [path])
    done("push", t)
    assert rec.accepted, rec.reasons
    t = time.perf_counter()
    ingest.ingest_raw(c, rec.delivery_id)
    done("ingest", t)
    t = time.perf_counter()
    validate.import_in_background(c)  # as the curated asset does: GX (if the suite needs it) imports while the plan runs
    parts = validate.PartSuite.start(c)  # as the curated asset does: the suite on each part while it is in memory
    st = curate.curate_delivery(c, rec.delivery_id, on_part=parts.add if parts is not None else None)
    done("curate", t)
    t = time.perf_counter()
    rep = validate.validate(c, curate.curated_path(c, rec.delivery_id, s), run_name=rec.delivery_id, build_docs=False,
                            curation_stats=st.to_dict(), parts=parts)
    from datalab.store import state

    state.set_stage(rec.delivery_id, "validated" if rep.success else "failed", s=s, validation_ok=rep.success, validation=rep.to_dict())
    done("validate", t)
    spec_dir = Path(tempfile.mkdtemp())
    import shutil

    shutil.copytree(s.contracts_dir, spec_dir / "c")
    (spec_dir / "c" / "datasets" / "bench.yaml").write_text(f"name: bench\nsite: munich\ninputs: [{SPINDLE}]\n")
    os.environ["DATALAB_CONTRACTS"] = str(spec_dir / "c")
    t = time.perf_counter()
    res = publish.publish("bench")
    done("publish", t)
    return {"rows": st.rows_out, "stages": stages, "cpu_stages": cpu, "validation_ok": rep.success, "version": res.version}


def run_polars(path: Path | list[Path], out: Path) -> dict:
    import polars as pl

    t = time.perf_counter()
    conv = pl.DataFrame({"unit": ["[degF]", "psi", "[in_i]/s", "Hz", "[psi]"], "f": [5 / 9, 1 / 14.5037738, 25.4, 60.0, 1 / 14.5037738],
                         "o": [-32 * 5 / 9, 0.0, 0.0, 0.0, 0.0]})
    lim = pl.DataFrame({"sensor": ["spindle_temp", "oil_pressure", "vibration", "spindle_speed"], "lo": [-20.0, 0, 0, 0], "hi": [150.0, 250, 50, 24000]})
    lf = pl.scan_csv(path, schema_overrides={"value": pl.Float64, "ts": pl.String})
    ts = pl.col("ts").str.replace("Z$", "+00:00")
    lf = (
        lf.unique()
        .with_columns(time=ts.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%z", strict=False).dt.convert_time_zone("UTC")
                      .fill_null(ts.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False).dt.replace_time_zone("Europe/Berlin", ambiguous="earliest").dt.convert_time_zone("UTC")))
        .join(conv.lazy(), on="unit", how="left")
        .with_columns(value=pl.col("value") * pl.col("f").fill_null(1.0) + pl.col("o").fill_null(0.0))
        .join(lim.lazy(), on="sensor", how="left")
        .with_columns(out_of_range=(pl.col("value") < pl.col("lo")) | (pl.col("value") > pl.col("hi")),
                      key_dup=pl.len().over(["machine_id", "time", "sensor"]) > 1)
        .drop("f", "o", "lo", "hi", "ts")
    )
    lf.sink_parquet(out)
    rows = pl.scan_parquet(out).select(pl.len()).collect().item()
    return {"rows": rows, "stages": {"curate": time.perf_counter() - t}}


def warm_up() -> float:
    """Make this process a warm lab process, as ``datalab serve`` does as it starts (``datalab.warm``); seconds taken.

    Not timed: the delivery then meets a process that has imported the lab
    and its publish stack and loaded the contracts, as a push to the running
    service does. Without ``--warm`` the time includes all of that (a fresh
    process, as ``datalab push`` then ``datalab run`` then ``datalab publish``).
    """
    from datalab.warm import warm_process

    took = warm_process()
    print(f"  datalab warm-up (not timed, as a service process does as it starts): {took:.2f} s", file=sys.stderr, flush=True)
    return took


def worker(kind: str, path: list[Path], warm: bool = False) -> None:
    warmed = warm_up() if warm and kind == "datalab" else None
    t = time.perf_counter()
    res = run_datalab(path) if kind == "datalab" else run_polars(path, Path(tempfile.mkdtemp()) / "out.parquet")
    res["seconds"] = time.perf_counter() - t
    if warmed is not None:
        res["warm_up_s"] = warmed
    res["peak_rss_mb"] = rss_mb()
    print("RESULT " + json.dumps(res))


def generate_parts(c, rows: int, parts: int, work: Path) -> list[Path]:
    """The delivery as ``parts`` CSV files covering consecutive time periods.

    One frame of 200 M readings does not fit the generator's memory (6.9 GB
    at 50 M); each part is generated (seed 42 + k), written and freed before
    the next. Part k starts after every reading of part k-1 (the span is
    generous: the grid interleaves entities and sensors), so the parts hold
    no duplicates of each other, only the defects each part carries.
    """
    import datetime as dt

    from datalab.timeseries import sample

    step = c.curation.expected_step or 1_000_000
    per = -(-rows // parts)
    start = sample.DEFAULT_START
    out = []
    for k in range(parts):
        n = min(per, rows - k * per)
        name = "delivery.csv" if parts == 1 else f"delivery-{k + 1:02d}.csv"
        out.append(sample.write(sample.generate(c, n, seed=42 + k, start=start), work / name))
        start = start + dt.timedelta(microseconds=step * n)
        print(f"  part {k + 1}/{parts}: {n:,} readings -> {out[-1]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--worker")
    ap.add_argument("--file", type=Path, nargs="+", help="with --worker: the delivery's files")
    ap.add_argument("--input", type=Path, nargs="+", help="reuse a delivery generated earlier (skips generation; --rows is ignored)")
    ap.add_argument("--parts", type=int, default=1,
                    help="generate the delivery as N files of consecutive time periods (one delivery); keeps the generator's memory at rows/N")
    ap.add_argument("--only", choices=["polars", "datalab"], help="run one side only (e.g. a memory check at 50 M rows)")
    ap.add_argument("--warm", action="store_true",
                    help="datalab in a warm process: imports and contracts loaded before the timer starts, as in the "
                         "running service (datalab.warm); default: a fresh process, everything timed")
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.file, a.warm)
    work = Path(tempfile.mkdtemp(prefix="datalab-bench-"))
    sys.path.insert(0, str(ROOT))
    from datalab.contracts import contract

    c = contract.load_all(ROOT / "data_contracts")[SPINDLE]
    t = time.perf_counter()
    if a.input:
        paths = [p.resolve() for p in a.input]
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"reusing {len(paths)} file(s) ({mb:,.0f} MB)")
    else:
        paths = generate_parts(c, a.rows, max(1, a.parts), work)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"generated {a.rows:,} readings, {mb:,.0f} MB CSV in {len(paths)} file(s) in {time.perf_counter() - t:.1f} s -> {work}")
    results = {}
    kinds = (a.only,) if a.only else ("polars", "datalab")
    for kind in kinds:
        env = {**os.environ, "DATALAB_HOME": str(work / f"home-{kind}"), "DATALAB_ENGINE": os.environ.get("DATALAB_ENGINE", "cpu")}
        os.sync()  # the generator's (or the run before's) writes flushed first, as in run_all.run_one
        p = subprocess.run([sys.executable, __file__, "--worker", kind, "--file", *map(str, paths), *(["--warm"] if a.warm else [])],
                           env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(p.stdout[-2000:])
            raise SystemExit(f"{kind} failed")
        results[kind] = json.loads(line[7:])
    print(f"\n{'':28}{'rows':>12}{'seconds':>10}{'rows/s':>14}{'MB/s':>8}{'peak RSS MB':>13}")
    for kind, label in (("polars", "plain Polars script"), ("datalab", "datalab push->published" + (" (warm)" if a.warm else ""))):
        if kind not in results:
            continue
        r = results[kind]
        print(f"{label:28}{r['rows']:>12,}{r['seconds']:>10.1f}{r['rows'] / r['seconds']:>14,.0f}{mb / r['seconds']:>8.1f}{r['peak_rss_mb']:>13,.0f}")
    if "datalab" not in results:
        return
    st = results["datalab"]["stages"]
    total = sum(st.values())
    print("\ndatalab stages: " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in st.items()))
    cpu = results["datalab"].get("cpu_stages") or {}
    print("datalab CPU:    " + ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items()) + f"; {sum(cpu.values()):.1f} s in all")
    print(f"validation passed: {results['datalab']['validation_ok']}; version {results['datalab']['version']}")


if __name__ == "__main__":
    main()
