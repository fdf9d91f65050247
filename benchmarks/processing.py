"""Small deliveries' processing alone (issue 21): N pushed deliveries, then one warm ``run_pending()``.

    .venv/bin/python benchmarks/processing.py --deliveries 200
    DATALAB_LOCAL_RUNS=1 .venv/bin/python benchmarks/processing.py --deliveries 200 --profile /tmp/run.prof
    .venv/bin/python benchmarks/processing.py --one-at-a-time 20

``benchmarks/small_deliveries.py`` measures the issue's whole scenario
(pushes over HTTP while the runs go); this measures what the runs alone
cost, without the service competing for the cores: sample deliveries of
``--rows`` rows, round-robin over the four time-series contracts that
``sample.generate`` fills, pushed in process (``landing.push``, timed),
then one ``pipelines.runner.run_pending()`` in a process that has already
built the definitions and started its worker processes, as a running lab
has. Prints deliveries/s of the push and of the processing, the CPU the
processing took (this process and its workers: core-ms per delivery,
steadier than the rate on a shared host), and the peak
RSS of this process and of its largest worker. ``--one-at-a-time N``
measures the common case instead, a firm pushing now and then: N
deliveries, each pushed (in process) and then processed by a
``run_pending()`` of its own in the warm process, the time of each call
(median, p95, slowest). ``--live-partitions N`` first gives each contract N earlier
live partitions in Dagster, as a lab with a month's history has. ``--profile`` writes a
cProfile of the processing (of this process only: with
``DATALAB_LOCAL_RUNS`` above 1 the runs are in the workers; set it to 1 to
profile them).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deliveries", type=int, default=200)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--profile", type=Path, help="write a cProfile of the processing here")
    ap.add_argument("--live-partitions", type=int, default=0, metavar="N",
                    help="give each contract N earlier live Dagster partitions first (a month of a delivery a "
                         "minute is 43,000, all live within DATALAB_PARTITION_KEEP_DAYS)")
    ap.add_argument("--one-at-a-time", type=int, default=0, metavar="N",
                    help="instead: N deliveries, each pushed and then processed alone (a run_pending per delivery)")
    args = ap.parse_args()
    os.environ.setdefault("DATALAB_ENGINE", "cpu")
    base = Path(tempfile.mkdtemp(prefix="datalab-processing-"))
    try:
        contracts = Path(shutil.copytree(ROOT / "data_contracts", base / "contracts"))
        from tests.service_harness import use_lab

        with use_lab(base / "lab", contracts):
            import small_deliveries

            from datalab.config import settings
            from datalab.contracts import contract as contracts_mod
            from datalab.intake import landing
            from pipelines import runner

            chosen = {cid: c for cid, c in sorted(contracts_mod.load_all(contracts).items())
                      if c.kind == "timeseries" and c.layout.shape in ("long", "wide")}
            if args.one_at_a_time:
                one_at_a_time(chosen, args.one_at_a_time, args.rows, base / "files")
                return
            files = small_deliveries.make_files(chosen, args.deliveries, args.rows, base / "files")
            runner.run_pending()  # warm: the definitions built, the instance opened
            if args.live_partitions:
                from assets.common import partitions_for

                inst = runner.instance()
                for c in chosen.values():  # keys that sort before today's deliveries, as a history's do
                    inst.add_dynamic_partitions(partitions_for(c).name, [f"d-20250101{i:06d}-{i % 65536:08x}"
                                                                         for i in range(args.live_partitions)])
                inst.dispose()
            runner.start_local_workers()
            t, cpu0 = time.perf_counter(), time.process_time()
            for c, p in files:
                landing.push(c, [p])
            push_s, push_cpu = time.perf_counter() - t, time.process_time() - cpu0
            prof = cProfile.Profile() if args.profile else None
            t, cpu0 = time.perf_counter(), cpu_seconds()
            if prof:
                prof.enable()
            runs = runner.run_pending()
            if prof:
                prof.disable()
                prof.dump_stats(str(args.profile))
            run_s, run_cpu = time.perf_counter() - t, cpu_seconds() - cpu0
            width = settings().local_runs
            runner.stop_local_workers()
        ok = sum(1 for r in runs if r.validation_ok)
        print(f"pushed {len(files)} deliveries of {args.rows:,} rows in {push_s:.2f} s ({len(files) / push_s:.1f}/s, "
              f"in process; {1000 * push_cpu / len(files):.0f} core-ms per delivery)")
        print(f"processed {len(runs)} ({ok} passed the suite) in {run_s:.2f} s: {len(runs) / run_s:.2f} deliveries/s "
              f"({width} runs side by side at most, DATALAB_LOCAL_RUNS); "
              f"{run_cpu:.2f} CPU s, {1000 * run_cpu / max(1, len(runs)):.0f} core-ms per delivery")
        # A child's peak is known once it has exited (the workers were stopped above); with one
        # lane there are none, and the figure would be some other child's (a forked one starts at
        # this process's size).
        workers = (f", largest worker {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MB"
                   if width > 1 else "")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB{workers}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def cpu_seconds() -> float:
    """CPU time (user and system, all threads) of this process and of its live child processes (the workers).

    The host's other load moves the wall-clock rate by 10 % between runs;
    the CPU a delivery costs moves much less, so small changes show in it.
    """
    total = time.process_time()
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for pid in (d for d in os.listdir("/proc") if d.isdigit()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid; utime and stime follow at 11 and 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def one_at_a_time(chosen: dict, n: int, rows: int, files_dir: Path) -> None:
    """Push one delivery, process it with a run_pending() of its own, n times (after 4 to warm up)."""
    import small_deliveries

    from datalab.intake import landing
    from pipelines import runner

    files = small_deliveries.make_files(chosen, n + 4, rows, files_dir)
    runner.run_pending()  # warm: the definitions built, the instance opened
    seconds = []
    for k, (c, p) in enumerate(files):
        landing.push(c, [p])
        t = time.perf_counter()
        runs = runner.run_pending()
        if k >= 4:
            seconds.append(time.perf_counter() - t)
        if len(runs) != 1 or runs[0].validation_ok is None:
            raise SystemExit(f"expected one validated delivery, got {runs}")
    ms = sorted(x * 1000 for x in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{n} deliveries of {rows:,} rows, each pushed and then processed alone (run_pending): "
          f"median {ms[len(ms) // 2]:.0f} ms, p95 {p95:.0f} ms, slowest {ms[-1]:.0f} ms "
          f"({len({c.id for c, _ in files})} contracts in turn)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
