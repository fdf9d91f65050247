"""Load test of the lab service on loopback: N concurrent clients pushing and pulling for T seconds.

    .venv/bin/python benchmarks/service_load.py --seconds 60 --clients 50 --workers 2

Sets up a lab in a temporary directory (one spindle delivery run through the
Dagster pipelines and published, so there is something to pull), registers
two firms and a consumer team, starts ``datalab serve`` as a subprocess, then
runs the clients (threads, one ``httpx.Client`` each). Half the operations
are pushes of a small CSV made unique per push (one value's trailing digits),
alternating between the two firms; the other half are pulls (manifest, then
the version's first data file in full, its SHA-256 checked against the
manifest). Reports requests/s, p50/p99 latency per operation, errors (any
non-2xx or transport error), and then checks every accepted delivery: its
receipt is readable by its firm, and its stored bytes in the firm's landing
area hash to what the client sent.

``run_load`` is also used by tests/test_service_load.py (a few seconds, to
prove correctness under concurrency, not speed).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUSHES = {"firm-a": ("spindle-telemetry", "bavaria-spindle"), "firm-b": ("press-line", "lyon-presses")}
PURPOSE = "predictive-maintenance"


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"push": [], "pull-manifest": [], "pull-file": []})
    errors: list[str] = field(default_factory=list)
    accepted: list[tuple[str, str, str, str]] = field(default_factory=list)  # (principal, tenant, delivery, sha)
    pulled_bytes: int = 0
    elapsed: float = 0.0  # from the moment all clients were ready until the last one stopped
    lock: threading.Lock = field(default_factory=threading.Lock)


def _unique(base: bytes, n: int) -> bytes:
    """The base CSV with the first reading's value given trailing digits ``n``: new bytes, same rows."""
    head, first, rest = base.split(b"\n", 2)
    cols = first.split(b",")
    cols[3] = f"{float(cols[3]):.3f}{n:08d}".encode()
    return b"\n".join([head, b",".join(cols), rest])


def run_load(url: str, tokens: dict[str, str], bases: dict[str, bytes], seconds: float, clients: int,
             dataset: str = "plant-telemetry", version: str = "1.0.0") -> Stats:
    """Run ``clients`` threads for ``seconds``; returns what they saw."""
    stats = Stats()
    counter = itertools.count(1)
    # The clock starts when every client is ready (creating 2 x 50 httpx clients takes seconds).
    clock: dict[str, float] = {}
    start = threading.Barrier(clients, action=lambda: clock.update(deadline=time.monotonic() + seconds))

    def client(idx: int) -> None:
        firm = "firm-a" if idx % 2 == 0 else "firm-b"
        product, tenant = PUSHES[firm]
        push_c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[firm]}"}, timeout=120)
        pull_c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['team-de']}"}, timeout=120)
        base = f"/v1/datasets/{dataset}/versions/{version}"
        start.wait()
        deadline = clock["deadline"]
        op = idx
        try:
            while time.monotonic() < deadline:
                op += 1
                t0 = time.perf_counter()
                try:
                    if op % 2 == 0:
                        n = next(counter)
                        data = _unique(bases[firm], n)
                        r = push_c.post(f"/v1/provider/contracts/{product}/deliveries",
                                        files=[("file", (f"load-{n}.csv", data, "text/csv"))],
                                        headers={"Idempotency-Key": f"load-{n}"})
                        dt = time.perf_counter() - t0
                        ok = r.status_code == 201 and r.json()["status"] == "accepted"
                        with stats.lock:
                            stats.latencies["push"].append(dt)
                            if ok:
                                stats.accepted.append((firm, tenant, r.json()["delivery_id"],
                                                       hashlib.sha256(data).hexdigest()))
                                if r.json()["files"][0]["sha256"] != stats.accepted[-1][3]:
                                    stats.errors.append(f"push {n}: receipt sha differs from the bytes sent")
                            else:
                                stats.errors.append(f"push {n}: {r.status_code} {r.text[:200]}")
                    else:
                        r = pull_c.get(f"{base}/manifest", params={"purpose": PURPOSE})
                        dt = time.perf_counter() - t0
                        with stats.lock:
                            stats.latencies["pull-manifest"].append(dt)
                        if r.status_code != 200:
                            with stats.lock:
                                stats.errors.append(f"manifest: {r.status_code} {r.text[:200]}")
                            continue
                        f = r.json()["files"][0]
                        t1 = time.perf_counter()
                        h = hashlib.sha256()
                        size = 0
                        with pull_c.stream("GET", f"{base}/files/0", params={"purpose": PURPOSE}) as fr:
                            for chunk in fr.iter_bytes(1 << 20):
                                h.update(chunk)
                                size += len(chunk)
                            status = fr.status_code
                        dt = time.perf_counter() - t1
                        with stats.lock:
                            stats.latencies["pull-file"].append(dt)
                            stats.pulled_bytes += size
                            if status != 200 or h.hexdigest() != f["sha256"]:
                                stats.errors.append(f"file: {status}, sha256 ok: {h.hexdigest() == f['sha256']}")
                except httpx.HTTPError as e:
                    with stats.lock:
                        stats.errors.append(f"{type(e).__name__}: {e}")
        finally:
            push_c.close()
            pull_c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.elapsed = time.monotonic() - (clock["deadline"] - seconds)
    return stats


def verify(url: str, tokens: dict[str, str], home: Path, stats: Stats) -> list[str]:
    """Every accepted delivery: receipt readable by its firm, stored bytes hash to what was sent."""
    problems = []
    cs = {f: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[f]}"}, timeout=60) for f in PUSHES}
    for firm, tenant, delivery, sha in stats.accepted:
        r = cs[firm].get(f"/v1/provider/receipts/{delivery}")
        if r.status_code != 200 or r.json()["files"][0]["sha256"] != sha:
            problems.append(f"{delivery}: receipt {r.status_code}")
            continue
        stored = home / "landing" / tenant / "accepted" / sha[:2] / sha
        if not stored.is_file() or hashlib.sha256(stored.read_bytes()).hexdigest() != sha:
            problems.append(f"{delivery}: stored bytes missing or changed")
    for c in cs.values():
        c.close()
    problems += reconcile(home, stats)
    return problems


def reconcile(home: Path, stats: Stats) -> list[str]:
    """The catalog against what the clients saw: every accepted delivery once, nothing else of the run.

    A push the client saw fail (timeout, 5xx) must not have left a delivery
    behind either: the load's file names (``load-<n>.csv``) find every row
    the run wrote, whatever the client heard.
    """
    import sqlite3

    db = sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT d.id, COUNT(*) FROM dl_deliveries d JOIN dl_delivery_files f ON f.delivery_id = d.id "
            "WHERE f.name LIKE 'load-%' GROUP BY d.id").fetchall()
    finally:
        db.close()
    in_catalog = {r[0] for r in rows}
    accepted = [d for _, _, d, _ in stats.accepted]
    problems = [f"{d}: accepted {n} times" for d in set(accepted) if (n := accepted.count(d)) > 1]
    problems += [f"{d}: accepted but not in the catalog" for d in set(accepted) - in_catalog]
    problems += [f"{d}: in the catalog but no client was told it was accepted" for d in in_catalog - set(accepted)]
    return problems


def summary(stats: Stats, seconds: float, problems: list[str]) -> dict[str, Any]:
    def pct(xs: list[float], q: float) -> float | None:
        if not xs:
            return None
        return round(1000 * statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 1) if len(xs) > 1 else round(1000 * xs[0], 1)

    total = sum(len(v) for v in stats.latencies.values())
    return {
        "seconds": seconds,
        "requests": total,
        "requests_per_s": round(total / seconds, 1),
        "per_operation": {k: {"count": len(v), "per_s": round(len(v) / seconds, 1), "p50_ms": pct(v, 50),
                              "p95_ms": pct(v, 95), "p99_ms": pct(v, 99)}
                          for k, v in stats.latencies.items()},
        "all_p50_ms": pct([x for v in stats.latencies.values() for x in v], 50),
        "all_p99_ms": pct([x for v in stats.latencies.values() for x in v], 99),
        "errors": len(stats.errors),
        "error_samples": stats.errors[:5],
        "accepted_deliveries": len(stats.accepted),
        "accepted_verified": len(stats.accepted) - len(problems),
        "verify_problems": problems[:5],
        "pulled_mb": round(stats.pulled_bytes / 1e6, 1),
    }


def setup_lab(base: Path, workers: int) -> tuple[Any, dict[str, str], dict[str, bytes]]:
    """A lab with plant-telemetry 1.0.0 published, principals and tokens, served."""
    from tests.conftest import PRESS, SPINDLE
    from tests.service_harness import Server, add_principals, copy_contracts, sample_file, use_lab

    contracts = copy_contracts(base / "contracts")
    home = base / "lab"
    with use_lab(home, contracts):
        from datalab.contracts import contract as contracts_mod
        from datalab.intake import landing
        from pipelines import runner

        cs = contracts_mod.load_all(contracts)
        assert landing.push(cs[SPINDLE], [sample_file(SPINDLE, base, 2000, 1)], actor="bench").accepted
        assert all(r.validation_ok for r in runner.run_pending(SPINDLE))
        runner.publish("plant-telemetry")
    tokens = add_principals(home, contracts)
    bases = {"firm-a": sample_file(SPINDLE, base, 100, 7, "a.csv").read_bytes(),
             "firm-b": sample_file(PRESS, base, 100, 8, "b.csv").read_bytes()}
    # Three tokens carry 50 clients' traffic here: the per-token limit would measure itself, not the service.
    server = Server(home, contracts, workers=workers, env={"DATALAB_RATE_TOKEN_PER_MIN": "0"}).start()
    return server, tokens, bases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="datalab-load-"))
    os.environ.setdefault("DATALAB_ENGINE", "cpu")
    server = None
    try:
        server, tokens, bases = setup_lab(base, args.workers)
        print(f"serving {server.url} with {args.workers} worker(s); {args.clients} clients for {args.seconds:g} s",
              file=sys.stderr)
        stats = run_load(server.url, tokens, bases, args.seconds, args.clients)
        problems = verify(server.url, tokens, server.home, stats)
        out = summary(stats, round(stats.elapsed, 1), problems)
        out.update(clients=args.clients, workers=args.workers, cpus=os.cpu_count())
        print(json.dumps(out, indent=2))
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
        sys.exit(1 if out["errors"] or problems else 0)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
