"""Many small deliveries (issue 21): N deliveries of R rows pushed over HTTP, curated and validated through Dagster.

    .venv/bin/python benchmarks/small_deliveries.py --deliveries 500 --rows 10000 --workers 2 --pushers 4

Sets up a lab in a temporary directory the way ``benchmarks/service_load.py``
does (``tests/service_harness``: copied contracts, ``datalab serve`` in a
subprocess), with one firm principal and token per provider that has
time-series contracts. The repository has five time-series contracts, of
four firms, not five; one of them (open-benchmarks' hydraulic-rig) has a
matrix layout that ``sample.generate`` does not produce, so the deliveries
go round-robin over the other four, one per firm: bavaria-spindle
spindle-telemetry, lyon-presses press-line, oulu-pumps pump-telemetry and
open-benchmarks cmapss-fd001 (whose cycle axis ``sample.generate``
continues from a later start, so its deliveries do not repeat each other).
Every delivery is ``datalab.timeseries.sample`` output without
defects, unique by seed (each seed on a day of its own, so no delivery
repeats another's readings); the files are written before the clock starts.

Then, at the same moment:

* ``--pushers`` client threads push the deliveries as fast as the service
  takes them (``POST /v1/provider/contracts/<product>/deliveries``); a push
  the lab asks to wait (429 with Retry-After: its intake pacing,
  ``datalab.intake.pacing``) asks the lab whether it takes it now
  (``GET .../intake``, no body) after each wait and is sent again once it
  does, and a pusher's next push under a contract told to wait in the last
  10 s asks first, as ``datalab.client.Client.push`` does
  (``--resend-bodies``: sent again after each wait without asking); each
  delivery's push time is when its receipt came back;
* a separate processing process runs ``pipelines.runner.run_pending()`` in a
  loop, as the sensor would launch the runs (a contract's pending deliveries
  in runs of up to ``DATALAB_RUN_BATCH``; set it to 1 for a run per delivery), and records the moment each
  delivery's run reports it validated (``on_event``). The process has
  imported Dagster and built the definitions before the clock starts (a
  running daemon is warm too).

Reports deliveries/s sustained (validated deliveries over the time from the
first push to the last validation), push throughput, push-to-validated
latency p50/p95/p99 from the receipt to the validation and p50/p95 from the
first send (the waits included), how many pushes were asked to wait, the processing
process's peak RSS, and one JSON line with all of it. Afterwards
``--single`` more deliveries are pushed one at a time and each is run alone
(``run_pending`` in this process, warm), broken down from the Dagster event
log: the raw (parse) and curated (curate + suite check) steps, the curation
and validation seconds the assets record, and what is left to Dagster and
the runner around them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


def pct(xs: list[float], q: int) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return round(xs[0], 3)
    return round(statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 3)


# --- the processing process ------------------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of process ``pid`` and its live descendants, from /proc.

    The benchmark's processes share two cores: what each side costs per
    delivery (the service's pushes, the runs) says where the cores went,
    which the rates alone do not.
    """
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def process(events: Path, expect: int, deadline_s: float) -> None:
    """Run ``run_pending`` until ``expect`` deliveries have a result; one JSON line per result in ``events``."""
    from pipelines import runner

    out = events.open("a", buffering=1)
    runner.run_pending()  # warm: definitions built, instance opened (nothing is pending yet)
    runner.start_local_workers()  # and the worker processes that run contracts side by side (DATALAB_LOCAL_RUNS)
    out.write(json.dumps({"ready": time.time()}) + "\n")
    cpu0 = tree_cpu(os.getpid())
    seen = 0
    deadline = time.monotonic() + deadline_s

    def on_event(r: Any) -> None:
        nonlocal seen
        seen += 1
        out.write(json.dumps({"delivery": r.delivery_id, "t": time.time(), "success": r.success,
                              "validation_ok": r.validation_ok, "message": r.message}) + "\n")

    calls = 0
    # The parent writes the number of accepted pushes once pushing is over (a refused push has no run).
    final = events.with_suffix(".expect")
    while time.monotonic() < deadline:
        if final.exists():
            expect = int(final.read_text())
            if seen >= expect:
                break
        calls += 1
        if not runner.run_pending(on_event=on_event):
            time.sleep(0.2)
    done, cpu = time.time(), tree_cpu(os.getpid()) - cpu0  # before the workers stop
    runner.stop_local_workers()  # so that their peak is counted (a child's is known once it has exited)
    out.write(json.dumps({"done": done, "seen": seen, "run_pending_calls": calls, "cpu_s": round(cpu, 2),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)})
              + "\n")
    out.close()


# --- the lab ---------------------------------------------------------------------------------------------------


def setup_lab(base: Path, workers: int) -> tuple[Any, Path, Path, dict[str, Any], dict[str, str]]:
    """A served lab with one firm principal (and token) per time-series provider."""
    from tests.service_harness import Server, use_lab

    # The repository's contracts as they are (the harness's copy_contracts shrinks press-line's file limit to 256 KiB).
    contracts = Path(shutil.copytree(ROOT / "data_contracts", base / "contracts"))
    home = base / "lab"
    with use_lab(home, contracts):
        from datalab.contracts import contract as contracts_mod
        from datalab.policy import auth

        cs = contracts_mod.load_all(contracts)
        # Every time-series contract that sample.generate can fill (long or wide layout).
        chosen = {cid: c for cid, c in sorted(cs.items())
                  if c.kind == "timeseries" and c.layout.shape in ("long", "wide")}
        tokens = {}
        for tenant in sorted({c.tenant for c in chosen.values()}):
            auth.add_principal(f"bench-{tenant}", "firm", tenant, None, None, actor="bench")
            tokens[tenant] = auth.create_token(f"bench-{tenant}", 7, "bench", actor="bench")[0]
    # Five firms push hundreds of deliveries a minute: the per-token limit would measure itself.
    server = Server(home, contracts, workers=workers, env={"DATALAB_RATE_TOKEN_PER_MIN": "0"}).start()
    return server, home, contracts, chosen, tokens


def make_files(chosen: dict[str, Any], n: int, rows: int, dst: Path, first_seed: int = 1) -> list[tuple[Any, Path]]:
    """``n`` sample deliveries, round-robin over the contracts, each unique by seed (and day)."""
    from datalab.timeseries import sample

    dst.mkdir(parents=True, exist_ok=True)
    order = list(chosen.values())
    out = []
    for i in range(n):
        c = order[i % len(order)]
        seed = first_seed + i
        p = dst / f"{c.product}-{seed}.csv"
        sample.write(sample.generate(c, rows, seed=seed, start=START + dt.timedelta(days=seed),
                                     defects=sample.Defects.none()), p)
        out.append((c, p))
    return out


# Whether a push told to wait asks the lab (GET .../intake, no body) before sending its body again,
# and so does the next push under that contract, as datalab.client.Client.push does;
# --resend-bodies turns it off (the client before it asked).
ASK_FIRST = True


def _ask(client: httpx.Client, c: Any) -> int:
    """Ask the lab until it takes a push under ``c`` (GET .../intake, no body); the waits it asked for."""
    waits = 0
    while True:
        a = client.get(f"/v1/provider/contracts/{c.product}/intake", timeout=60)
        if a.status_code != 200 or a.json().get("open", True):
            return waits
        waits += 1
        time.sleep(int(a.json().get("retry_after_s") or 1))


def push_one(client: httpx.Client, c: Any, path: Path, told: dict[str, float]) -> tuple[int, dict[str, Any] | str, int, int]:
    """One push until it is answered other than "wait" (429 with Retry-After: the lab's intake pacing).

    As ``datalab.client.Client.push``: after a wait, and before the first try
    under a contract told to wait within ``ASK_FIRST_S`` (``told``: this
    pusher's memory of that), the lab is asked before the body is sent.
    Returns (status, receipt or error text, waits, bodies sent and refused).
    """
    from datalab.client import ASK_FIRST_S, retry_after

    waits = refused = 0
    if ASK_FIRST and time.monotonic() - told.get(c.id, -ASK_FIRST_S) < ASK_FIRST_S:
        waits += _ask(client, c)
    while True:
        r = client.post(f"/v1/provider/contracts/{c.product}/deliveries",
                        files=[("file", (path.name, path.read_bytes(), "text/csv"))],
                        headers={"Idempotency-Key": f"bench-{path.stem}"}, timeout=300)
        if (delay := retry_after(r)) is None:
            return r.status_code, (r.json() if r.status_code in (200, 201) else r.text[:300]), waits, refused
        told[c.id] = time.monotonic()
        waits += 1
        refused += 1
        time.sleep(delay)
        if ASK_FIRST:
            waits += _ask(client, c)


def push_all(url: str, tokens: dict[str, str], files: list[tuple[Any, Path]], pushers: int) -> dict[str, Any]:
    """Push every file from ``pushers`` threads; per delivery: sent and receipt times (epoch seconds)."""
    todo: queue.Queue[tuple[Any, Path]] = queue.Queue()
    for f in files:
        todo.put(f)
    pushed: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        clients = {t: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tok}"}) for t, tok in tokens.items()}
        told: dict[str, float] = {}  # contract -> when this pusher was last told to wait
        try:
            while True:
                try:
                    c, path = todo.get_nowait()
                except queue.Empty:
                    return
                t0, waits, resent = time.time(), 0, 0
                try:
                    status, body, waits, resent = push_one(clients[c.tenant], c, path, told)
                except httpx.HTTPError as e:
                    status, body = 0, f"{type(e).__name__}: {e}"
                t1 = time.time()
                with lock:
                    if status == 201 and isinstance(body, dict) and body.get("status") == "accepted":
                        pushed.append({"delivery": body["delivery_id"], "contract": c.id, "sent": t0, "receipt": t1,
                                       "waits": waits, "resent": resent})
                    else:
                        errors.append(f"{path.name}: {status} {body}")
        finally:
            for cl in clients.values():
                cl.close()

    threads = [threading.Thread(target=worker) for _ in range(pushers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"pushed": pushed, "errors": errors}


# --- one delivery alone ----------------------------------------------------------------------------------------


def breakdown(delivery: str) -> dict[str, Any]:
    """The Dagster run of one delivery, from its event log: run and step durations, asset-recorded seconds."""
    import dagster as dg

    from pipelines import runner

    inst = runner.instance()
    runs = inst.get_runs(filters=dg.RunsFilter(tags={"datalab/delivery": delivery}))
    if not runs:
        return {}
    logs = inst.all_logs(runs[0].run_id)
    first, last = logs[0].timestamp, logs[-1].timestamp
    steps: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {"run_events_s": round(last - first, 3)}
    for e in logs:
        ev = e.dagster_event
        if ev is None:
            continue
        kind = ev.event_type_value
        if kind == "RUN_START":
            out["run_start_after_first_event_s"] = round(e.timestamp - first, 3)
        elif kind in ("RUN_SUCCESS", "RUN_FAILURE"):
            out["run_end_after_first_event_s"] = round(e.timestamp - first, 3)
        elif kind == "STEP_START" and ev.step_key:
            steps.setdefault(ev.step_key, {})["start"] = e.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key:
            steps.setdefault(ev.step_key, {})["end"] = e.timestamp
        elif kind == "ASSET_MATERIALIZATION":
            md = ev.event_specific_data.materialization.metadata
            key = ev.event_specific_data.materialization.asset_key.path[-1]
            for name in ("seconds", "curation_seconds"):
                if name in md:
                    out[f"{key}_{name}"] = md[name].value
        elif kind == "ASSET_CHECK_EVALUATION":
            md = ev.event_specific_data.metadata or {}
            if "seconds" in md:
                out["validation_seconds"] = md["seconds"].value
    out["steps_s"] = {k.split("__")[-1] if "__" in k else k: round(v["end"] - v["start"], 3)
                      for k, v in steps.items() if "start" in v and "end" in v}
    return out


def single_runs(url: str, tokens: dict[str, str], home: Path, contracts: Path, chosen: dict[str, Any],
                n: int, rows: int, files_dir: Path, first_seed: int) -> list[dict[str, Any]]:
    """Push ``n`` more deliveries one at a time and run each alone, timed (warm, in this process)."""
    from tests.service_harness import use_lab

    out = []
    files = make_files(chosen, n, rows, files_dir, first_seed)
    with use_lab(home, contracts):
        from pipelines import runner

        runner.run_pending()  # warm, as the processing process was
        for c, path in files:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[c.tenant]}"}) as cl:
                status, body = push_one(cl, c, path)
            if status != 201 or not isinstance(body, dict):
                out.append({"contract": c.id, "error": f"{status} {body}"})
                continue
            t0 = time.perf_counter()
            runs = runner.run_pending()
            total = time.perf_counter() - t0
            out.append({"contract": c.id, "delivery": body["delivery_id"], "run_pending_s": round(total, 3),
                        "validation_ok": [r.validation_ok for r in runs], **breakdown(body["delivery_id"])})
    return out


# --- the benchmark ---------------------------------------------------------------------------------------------


def _local_runs(home: Path, contracts: Path) -> int:
    """DATALAB_LOCAL_RUNS as the processing process read it."""
    from tests.service_harness import use_lab

    with use_lab(home, contracts):
        from datalab.config import settings

        return settings().local_runs


def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    from tests.service_harness import lab_env

    server, home, contracts, chosen, tokens = setup_lab(base, args.workers)
    try:
        print(f"serving {server.url} with {args.workers} worker(s); {len(chosen)} contracts of {len(tokens)} firms",
              file=sys.stderr)
        t = time.perf_counter()
        files = make_files(chosen, args.deliveries, args.rows, base / "files")
        print(f"{len(files)} files of {args.rows} rows written in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        events = base / "events.jsonl"
        proc = subprocess.Popen([sys.executable, __file__, "--process", str(events), "--expect", str(len(files)),
                                 "--deadline", str(args.deadline)], env=lab_env(home, contracts), cwd=str(base))
        while not (events.exists() and '"ready"' in events.read_text()):
            if proc.poll() is not None:
                raise RuntimeError(f"the processing process exited with {proc.returncode}")
            time.sleep(0.1)

        t_start, service_cpu0 = time.time(), tree_cpu(server.proc.pid)
        pushes = push_all(server.url, tokens, files, args.pushers)
        t_pushed, service_cpu = time.time(), tree_cpu(server.proc.pid) - service_cpu0
        (base / "events.expect").write_text(str(len(pushes["pushed"])))
        for e in pushes["errors"][:3]:
            print(f"push refused: {e}", file=sys.stderr)
        print(f"{len(pushes['pushed'])} pushed in {t_pushed - t_start:.1f} s; waiting for the runs", file=sys.stderr)
        proc.wait()
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        results = {x["delivery"]: x for x in lines if "delivery" in x}
        done = next((x for x in lines if "done" in x), {})

        pushed = pushes["pushed"]
        # Validated = the run ended with the suite's verdict (stage "validated"), passed or not: the
        # verdict is the work measured. A run that ended without one (an error) counts as failed.
        validated = [p | {"validated": results[p["delivery"]]["t"]} for p in pushed
                     if p["delivery"] in results and results[p["delivery"]]["validation_ok"] is not None]
        verdict_failed = sorted({p["contract"] for p in pushed if p["delivery"] in results
                                 and results[p["delivery"]]["validation_ok"] is False})
        failed = [f'{p["contract"]}: {results[p["delivery"]]["message"]}' for p in pushed
                  if p["delivery"] in results and results[p["delivery"]]["validation_ok"] is None]
        lat = [v["validated"] - v["receipt"] for v in validated]
        lat_sent = [v["validated"] - v["sent"] for v in validated]  # the waits the lab asked for included
        first_push = min((p["sent"] for p in pushed), default=t_start)
        last_valid = max((v["validated"] for v in validated), default=first_push)
        push_span = max((p["receipt"] for p in pushed), default=first_push) - first_push
        span = last_valid - first_push
        out: dict[str, Any] = {
            "deliveries": args.deliveries, "rows": args.rows, "workers": args.workers, "pushers": args.pushers,
            "contracts": len(chosen), "firms": len(tokens), "cpus": os.cpu_count(),
            "pushed": len(pushed), "push_errors": len(pushes["errors"]), "push_error_samples": pushes["errors"][:3],
            "push_seconds": round(push_span, 2),
            "pushes_per_s": round(len(pushed) / push_span, 2) if push_span > 0 else None,
            "push_p50_s": pct([p["receipt"] - p["sent"] for p in pushed], 50),
            "push_p99_s": pct([p["receipt"] - p["sent"] for p in pushed], 99),
            "pushes_asked_to_wait": sum(1 for p in pushed if p["waits"]),
            "waits_asked": sum(p["waits"] for p in pushed),
            "bodies_refused": sum(p["resent"] for p in pushed),
            "validated": len(validated),
            "validated_passed": sum(1 for v in validated if results[v["delivery"]]["validation_ok"]),
            "suite_failed_contracts": verdict_failed, "failed": len(failed), "failed_samples": failed[:3],
            "not_run": len(pushed) - len(validated) - len(failed),
            "seconds_first_push_to_last_validated": round(span, 2),
            "validated_per_s": round(len(validated) / span, 2) if span > 0 else None,
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95), "latency_p99_s": pct(lat, 99),
            "latency_max_s": round(max(lat), 3) if lat else None,
            "sent_to_validated_p50_s": pct(lat_sent, 50), "sent_to_validated_p95_s": pct(lat_sent, 95),
            "sent_to_validated_max_s": round(max(lat_sent), 3) if lat_sent else None,
            "processing_peak_rss_mb": done.get("peak_rss_mb"), "worker_peak_rss_mb": done.get("worker_peak_rss_mb"),
            "local_runs": _local_runs(home, contracts), "run_pending_calls": done.get("run_pending_calls"),
            # CPU per pushed delivery: the service (all its workers) over the pushes, the processing
            # process and its workers from its start to the last result
            "service_core_ms_per_push": round(1000 * service_cpu / len(pushed)) if pushed else None,
            "processing_core_ms_per_delivery": round(1000 * done["cpu_s"] / len(pushed)) if pushed and "cpu_s" in done else None,
        }
        if args.single:
            out["single"] = single_runs(server.url, tokens, home, contracts, chosen, args.single, args.rows,
                                        base / "single", args.deliveries + 1)
        return out
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deliveries", type=int, default=500)
    ap.add_argument("--rows", type=int, default=10_000, help="rows per delivery (sample.generate's rows)")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of the service")
    ap.add_argument("--pushers", type=int, default=4, help="client threads pushing")
    ap.add_argument("--single", type=int, default=3, help="deliveries then run alone, one at a time, broken down")
    ap.add_argument("--deadline", type=float, default=3600, help="the processing process gives up after this many s")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    ap.add_argument("--resend-bodies", action="store_true",
                    help="a push told to wait sends its body again after the wait without asking first (GET .../intake)")
    ap.add_argument("--process", type=Path, help=argparse.SUPPRESS)  # internal: be the processing process
    ap.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.process:
        process(args.process, args.expect, args.deadline)
        return
    os.environ.setdefault("DATALAB_ENGINE", "cpu")
    global ASK_FIRST
    ASK_FIRST = not args.resend_bodies
    base = Path(tempfile.mkdtemp(prefix="datalab-small-"))
    try:
        out = run(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sus, p95, p95_sent = out["validated_per_s"], out["latency_p95_s"], out["sent_to_validated_p95_s"]
    print(f"pushed {out['pushed']}/{out['deliveries']} in {out['push_seconds']} s ({out['pushes_per_s']}/s, "
          f"push p50 {out['push_p50_s']} s, p99 {out['push_p99_s']} s, {out['push_errors']} errors; "
          f"{out['pushes_asked_to_wait']} asked to wait by the lab's intake pacing, {out['waits_asked']} waits, "
          f"{out['bodies_refused']} bodies sent and refused)")
    print(f"validated {out['validated']} ({out['validated_passed']} passed the suite; failing: "
          f"{out['suite_failed_contracts'] or 'none'}; failed {out['failed']}, not run {out['not_run']}) in "
          f"{out['seconds_first_push_to_last_validated']} s from the first push: {sus} deliveries/s sustained "
          f"(target >= 5: {'met' if sus and sus >= 5 else 'NOT met'})")
    met = p95 is not None and p95_sent is not None and max(p95, p95_sent) < 10
    print(f"push-to-validated from the receipt p50 {out['latency_p50_s']} s, p95 {p95} s, p99 {out['latency_p99_s']} s; "
          f"from the first send (waits included) p50 {out['sent_to_validated_p50_s']} s, p95 {p95_sent} s "
          f"(target p95 < 10 both ways: {'met' if met else 'NOT met'}); "
          f"processing peak RSS {out['processing_peak_rss_mb']} MB, largest worker's "
          f"{out['worker_peak_rss_mb']} MB ({out['local_runs']} runs side by side)")
    print(f"CPU per delivery: the service {out['service_core_ms_per_push']} core-ms a push, the processing "
          f"{out['processing_core_ms_per_delivery']} core-ms ({out['cpus']} cores in all)")
    for s in out.get("single", []):
        print(f"alone: {s}")
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    sys.exit(1 if out["push_errors"] or out["failed"] or out["not_run"] else 0)


if __name__ == "__main__":
    main()
