"""datalab end to end beside the alternatives a data engineer would write, in one run.

    .venv/bin/python benchmarks/run_all.py --rows 1000000 [--rows 10000000 ...] [--only datalab polars ...] [--rounds 5]

For each size it generates one bavaria-spindle delivery (``datalab.timeseries.sample``,
seed 42, every defect: duplicates, wrong units, missing values, spikes,
gaps, shifted time zones) and runs on that same CSV, each in a fresh
process so that each peak memory is its own:

* ``datalab``      push -> raw -> curated -> validated (the derived suite on Polars,
                   results as GX gives them; GX where needed) -> published
                   Iceberg version (``benchmarks/e2e.py``), CPU engine;
* ``datalab-warm`` the same in a warm process: the lab imported and its
                   contracts loaded before the timer starts, as in the running
                   service when a delivery arrives (``datalab.warm``); ``datalab``
                   times a fresh process, imports included;
* ``datalab-gpu``  the same with ``DATALAB_ENGINE=gpu``, when cudf-polars
                   imports and finds a GPU (else shown as not available);
* ``polars``       plain Polars streaming script (alternatives/polars_plain.py);
* ``duckdb``       DuckDB SQL, COPY to Parquet (alternatives/duckdb_sql.py);
* ``pandas_gx``    pandas + Great Expectations (alternatives/pandas_gx.py);
* ``io_floor``     the I/O floor: pyarrow reads the CSV on every core and writes
                   it as zstd Parquet, nothing else (alternatives/io_floor.py);
                   its line says how many times the floor datalab took.

Prints a table (rows/s, MB/s of CSV, wall time per stage, peak RSS, whether
the counts agree with datalab's curated table) and writes
``benchmarks/results/bench-<time>.json`` and ``.png``. Progress goes to
stderr, the table to stdout.

``--rounds N`` runs every tool N times on the same CSV, each round in a
rotated order (round 2 starts with the second tool, and so on), so that no
tool always runs first or right after another's writes. The table then
shows each tool's median run, and a line per tool gives the walls of every
round and how many times faster datalab was than it, round by round: on a
shared or drifting machine (the 2-vCPU VMs this was measured on changed
speed by a third within the hour) the ratio of two runs made a minute apart
says more than two single runs, and the median of those ratios is the
figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SEED = 42
KINDS = ("datalab", "datalab-warm", "datalab-gpu", "polars", "duckdb", "pandas_gx", "io_floor")
LABELS = {
    "datalab": "datalab push->published (cpu)",
    "datalab-warm": "datalab, warm process (cpu)",
    "datalab-gpu": "datalab push->published (gpu)",
    "polars": "plain Polars script",
    "duckdb": "DuckDB SQL",
    "pandas_gx": "pandas + Great Expectations",
    "io_floor": "I/O floor (CSV -> zstd Parquet)",
}
ALTERNATIVES = {"polars": "polars_plain", "duckdb": "duckdb_sql", "pandas_gx": "pandas_gx", "io_floor": "io_floor"}
# Counts that say two runs did the same curation (datalab's curated table is the reference).
AGREE = ("rows_out", "exact_duplicates_removed", "values_converted", "flag_missing", "flag_unit_unknown",
         "flag_out_of_range", "flag_key_duplicate", "flag_outlier", "flag_gap_before")


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM from /proc, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------
# workers (each in its own process)


def _datalab_worker(path: Path, warm: bool = False) -> dict[str, Any]:
    """Run benchmarks/e2e.py's end-to-end datalab run (``warm``: in a warmed process), then read back what curation counted."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import e2e

    from datalab.config import settings
    from datalab.store import state

    warmed = e2e.warm_up() if warm else None
    t = time.perf_counter()
    res = e2e.run_datalab(path)
    wall = time.perf_counter() - t
    s = settings()
    curated = sorted(s.curated.rglob("*.parquet"))
    st = (state.get(curated[0].stem, s=s) or {}).get("stats", {}).get("curated", {}) if curated else {}
    return {
        "tool": "datalab",
        "rows_in": st.get("rows_in"),
        "rows_out": res["rows"],
        "exact_duplicates_removed": st.get("exact_duplicates_removed"),
        "values_converted": st.get("values_converted"),
        "flags": {k: v for k, v in st.items() if k.startswith("flag_")},
        "validation": {"success": res["validation_ok"]},
        "stages": {k: round(v, 4) for k, v in res["stages"].items()},
        "cpu_stages": {k: round(v, 3) for k, v in res.get("cpu_stages", {}).items()},
        "seconds": round(wall, 4),
        **({"warm_up_s": round(warmed, 3)} if warmed is not None else {}),
        "engine": st.get("engine"),
        "version": res["version"],
    }


def worker(kind: str, path: Path, out: Path) -> None:
    if kind.startswith("datalab"):
        res = _datalab_worker(path, warm=kind == "datalab-warm")
    else:
        import importlib

        sys.path.insert(0, str(HERE))
        # only the one alternative's module: its peak memory is not inflated by the others' libraries
        mod = importlib.import_module(f"alternatives.{ALTERNATIVES[kind]}")
        res = mod.run(path, out / f"{kind}.parquet")
        res["validation"].pop("checks", None)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("RESULT " + json.dumps(res, default=str), flush=True)


# --------------------------------------------------------------------------
# the driver


def gpu_usable() -> tuple[bool, str]:
    """Whether datalab's GPU engine can run here, asked in a throwaway process (cudf is heavy)."""
    code = "from datalab.engine import gpu_status; import json; print(json.dumps(gpu_status()))"
    try:
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        ok, why = json.loads(p.stdout.strip().splitlines()[-1])
        return bool(ok), str(why)
    except Exception as e:
        return False, f"could not ask: {e}"


def generate(rows: int, work: Path) -> tuple[Path, dict]:
    sys.path.insert(0, str(ROOT))
    from datalab.contracts import contract
    from datalab.timeseries import sample

    c = contract.load_all(ROOT / "data_contracts")[sample_contract_id()]
    t = time.perf_counter()
    gen = sample.generate(c, rows, seed=SEED)
    path = sample.write(gen, work / f"spindle-{rows}.csv")
    log(f"generated {rows:,} readings ({gen.truth['rows']:,} lines, {path.stat().st_size / 1e6:,.0f} MB CSV) "
        f"in {time.perf_counter() - t:.1f} s -> {path}")
    return path, gen.truth


def sample_contract_id() -> str:
    sys.path.insert(0, str(HERE))
    from alternatives import spindle_spec

    return spindle_spec.CONTRACT_ID


def run_one(kind: str, path: Path, work: Path, timeout: float | None) -> dict[str, Any]:
    env = {**os.environ, "DATALAB_HOME": str(work / f"home-{kind}"),
           "DATALAB_ENGINE": "gpu" if kind == "datalab-gpu" else "cpu", "PYTHONUNBUFFERED": "1"}
    out = work / f"out-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--file", str(path), "--out", str(out)]
    # What the generator or the run before wrote is flushed first: on a 2-core machine the kernel
    # writing back ~0.6-1 GB of dirty pages during a run slowed its writes by up to 1 s (the push's
    # staging copy), so whichever tool ran first or after datalab paid for the others' writes.
    os.sync()
    log(f"{kind}: start")
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"{kind}: timed out after {timeout:.0f} s")
        return {"tool": kind, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        log(f"{kind}: FAILED (exit {p.returncode}); last output:\n{p.stdout[-2000:]}")
        return {"tool": kind, "error": f"exit {p.returncode}"}
    res = json.loads(line[7:])
    res["process_wall_s"] = round(wall, 3)
    log(f"{kind}: {res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:,.0f} MB")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / f"home-{kind}", ignore_errors=True)
    return res


def counts(res: dict) -> dict[str, Any]:
    return {"rows_out": res.get("rows_out"), "exact_duplicates_removed": res.get("exact_duplicates_removed"),
            "values_converted": res.get("values_converted"), **(res.get("flags") or {})}


def disagreements(res: dict, ref: dict | None) -> list[str]:
    if ref is None or "error" in ref or "error" in res:
        return []
    a, b = counts(res), counts(ref)
    return [f"{k} {a.get(k)} vs {b.get(k)}" for k in AGREE if a.get(k) != b.get(k)]


def table(size: dict) -> str:
    """The side-by-side table of one size."""
    mb = size["csv_mb"]
    head = f"{'':32}{'rows out':>11}{'wall s':>8}{'rows/s':>12}{'MB/s':>7}{'peak RSS MB':>13}  {'valid':<6}{'same counts':<12}stages (s)"
    lines = [f"{size['rows']:,} readings ({size['lines']:,} CSV lines, {mb:,.0f} MB)", head]
    ref = size["results"].get("datalab")
    for kind in KINDS:
        if kind not in size["results"]:
            continue
        r = size["results"][kind]
        label = LABELS[kind]
        if "error" in r or "not_available" in r:
            lines.append(f"{label:32}  {r.get('not_available') or r['error']}")
            continue
        secs = r["seconds"]
        diff = [] if r.get("floor") else disagreements(r, ref)
        same = "ref" if kind == "datalab" else ("n/a" if r.get("floor") else ("yes" if not diff else "NO"))
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        lines.append(f"{label:32}{r['rows_out']:>11,}{secs:>8.2f}{size['lines'] / secs:>12,.0f}{mb / secs:>7.1f}"
                     f"{r['peak_rss_mb']:>13,.0f}  {('yes' if r['validation']['success'] else 'no'):<6}{same:<12}{stages}")
        if diff:
            lines.append(f"{'':34}differs from datalab: {'; '.join(diff)}")
    d = size["results"].get("datalab")
    if d and "error" not in d:
        total = sum(d["stages"].values())
        lines.append(f"datalab: validation {100 * d['stages'].get('validate', 0) / total:.0f} % of the staged time; "
                     f"engine {(d.get('engine') or {}).get('device', '?')}")
        if cpu := d.get("cpu_stages"):
            lines.append("datalab CPU seconds (all threads): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
                         + f"; {sum(cpu.values()):.1f} in all, {sum(cpu.values()) / total:.1f} cores on average")
    lines += rounds_lines(size)
    g = size["results"].get("datalab-gpu")
    if g and "error" not in g and "not_available" not in g:
        eng = g.get("engine") or {}
        lines.append(f"datalab gpu: engine {eng.get('engine')} on {eng.get('device')}"
                     + (f", fallback: {eng.get('fallback')}" if eng.get("fallback") else "")
                     + (f"; curate {d['stages']['curate'] / g['stages']['curate']:.1f}x the cpu engine" if d and "error" not in d else ""))
    return "\n".join(lines)


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle one of an even number); a failed run if none succeeded."""
    ok = sorted((r for r in runs if "seconds" in r), key=lambda r: r["seconds"])
    if not ok:
        return runs[-1]
    return {**ok[(len(ok) - 1) // 2], "rounds": len(runs)}


def round_ratios(size: dict, kind: str, ref: str = "datalab") -> list[float]:
    """Round by round, the tool's wall time over datalab's (``ref``: or the warm process's) in the same round."""
    rounds = size.get("rounds") or {}
    return [r["seconds"] / d["seconds"] for d, r in zip(rounds.get(ref, []), rounds.get(kind, []), strict=False)
            if "seconds" in d and "seconds" in r]


def rounds_lines(size: dict) -> list[str]:
    """One line per tool when a size ran in several rounds: its walls, and datalab's lead round by round."""
    rounds = size.get("rounds") or {}
    n = max((len(v) for v in rounds.values()), default=0)
    if n < 2:
        return []
    out = [f"{n} rounds, each in a rotated order; the table shows each tool's median run"]
    for kind in KINDS:
        runs = rounds.get(kind)
        if not runs:
            continue
        walls = ", ".join(f"{r['seconds']:.2f}" if "seconds" in r else "failed" for r in runs)
        line = f"  {LABELS[kind]:30} walls {walls} s"
        for ref, who in (("datalab", "datalab"), ("datalab-warm", "datalab warm")):
            ratios = round_ratios(size, kind, ref) if not kind.startswith("datalab") else []
            if ratios and kind == "io_floor":  # how many times the floor datalab took
                times = [1 / x for x in ratios]
                line += (f"; {who} took {statistics.median(times):.2f}x the floor (median of the rounds' ratios;"
                         f" {min(times):.2f}-{max(times):.2f}x)")
            elif ratios:
                line += (f"; {who} faster by {statistics.median(ratios):.2f}x (median of the rounds' ratios;"
                         f" {min(ratios):.2f}-{max(ratios):.2f}x)")
        out.append(line)
    return out


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["sizes"]
    kinds = [k for k in KINDS if any(k in s["results"] and "seconds" in s["results"][k] for s in sizes)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        xs, tput, rss = [], [], []
        for j, s in enumerate(sizes):
            r = s["results"].get(kind) or {}
            if "seconds" in r:
                xs.append(j + i * width)
                tput.append(s["lines"] / r["seconds"] / 1e6)
                rss.append(r["peak_rss_mb"] / 1024)
        axes[0].bar(xs, tput, width, label=LABELS[kind])
        axes[1].bar(xs, rss, width, label=LABELS[kind])
    for ax, title in ((axes[0], "throughput, M rows/s (higher is better)"), (axes[1], "peak RSS, GiB (lower is better)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"{s['rows']:,} rows" for s in sizes])
        ax.set_title(title)
    axes[0].legend(fontsize=7, loc="upper right", framealpha=0.8)
    # stages of the largest size, stacked
    big = sizes[-1]
    names = [k for k in kinds if "seconds" in big["results"].get(k, {})]
    bottoms = [0.0] * len(names)
    stage_names: list[str] = []
    for k in names:
        stage_names += [st for st in big["results"][k]["stages"] if st not in stage_names]
    for st in stage_names:
        vals = [big["results"][k]["stages"].get(st, 0.0) for k in names]
        axes[2].barh(range(len(names)), vals, left=bottoms, label=st)
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    axes[2].set_yticks(range(len(names)), [LABELS[k] for k in names], fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_title(f"wall time per stage, s ({big['rows']:,} rows)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"datalab vs alternatives on {report['machine']['cpus']} CPUs ({report['machine']['note']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    import duckdb
    import pandas
    import polars

    try:
        mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem = 0
    try:
        from importlib.metadata import version

        gx_version = version("great-expectations")
    except Exception:
        gx_version = "?"
    return {
        "cpus": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "platform": platform.platform(),
        "python": platform.python_version(), "polars": polars.__version__, "duckdb": duckdb.__version__,
        "pandas": pandas.__version__, "great_expectations": gx_version,
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "note": "shared machine: indicative numbers" if (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0) > 0.5 * (os.cpu_count() or 1) else "quiet machine",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="readings per delivery; repeat for several sizes (default 1000000)")
    ap.add_argument("--only", nargs="+", choices=KINDS, help="run only these (default: all; datalab-gpu only where usable)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per run (default: none)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every tool this many times, in a rotated order each round; the table shows each "
                         "tool's median run and datalab's lead round by round (default 1)")
    ap.add_argument("--work", type=Path, help="where to put the data and homes (default: a temporary folder, removed after)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON and PNG (default benchmarks/results)")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, a.file, a.out)
        return 0
    sizes_wanted = a.rows or [1_000_000]
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    kinds = list(a.only or KINDS)
    gpu_ok, gpu_why = (False, "not asked for")
    if "datalab-gpu" in kinds:
        gpu_ok, gpu_why = gpu_usable()
        log(f"GPU engine: {'available' if gpu_ok else 'not available'} ({gpu_why})")
    work = a.work or Path(tempfile.mkdtemp(prefix="datalab-runall-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
                              "seed": SEED, "machine": machine(), "gpu": {"usable": gpu_ok, "why": gpu_why}, "sizes": []}
    try:
        for rows in sizes_wanted:
            path, truth = generate(rows, work)
            size = {"rows": rows, "lines": truth["rows"], "csv_mb": round(path.stat().st_size / 1e6, 2), "truth": truth,
                    "results": {}, "rounds": {}}
            runnable = []
            for kind in kinds:
                if kind == "datalab-gpu" and not gpu_ok:
                    size["results"][kind] = {"tool": kind, "not_available": f"not available: {gpu_why}"}
                else:
                    runnable.append(kind)
            for r in range(a.rounds if runnable else 0):
                if a.rounds > 1:
                    log(f"round {r + 1} of {a.rounds}")
                shift = r % len(runnable)  # each round starts one tool later
                for kind in runnable[shift:] + runnable[:shift]:
                    size["rounds"].setdefault(kind, []).append(run_one(kind, path, work, a.timeout))
            for kind in runnable:
                size["results"][kind] = median_run(size["rounds"][kind])
            report["sizes"].append(size)
            path.unlink(missing_ok=True)
            print("\n" + table(size) + "\n", flush=True)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    a.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_json = a.results / f"bench-{stamp}.json"
    out_json.write_text(json.dumps(report, indent=2, default=str))
    png = a.results / f"bench-{stamp}.png"
    try:
        plot(report, png)
    except ImportError:
        png = None
        log("matplotlib is not installed (pip install -e '.[bench]'): no plot")
    log(f"results: {out_json}" + (f", {png}" if png else ""))
    failed = [k for s in report["sizes"] for k, r in s["results"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
