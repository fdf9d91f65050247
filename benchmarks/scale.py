"""Many deliveries from several firms at once: local profile beside the cluster profile.

    .venv/bin/python benchmarks/scale.py                       # small default (quick)
    .venv/bin/python benchmarks/scale.py --deliveries 40 --rows 250000   # the issue's sizes
    .venv/bin/python benchmarks/scale.py --storage s3          # cluster rows on object storage (moto's S3 server)

Each configuration gets a fresh lab: the deliveries are pushed at once (round
robin over the firms), then processed with ``local`` (in-process, one after
the other) and with ``cluster`` at 1 and 2 Celery workers (PostgreSQL
instance and catalog, RabbitMQ). Reported per configuration: deliveries per
minute, p50/p95 push-to-validated latency (receipt time to the validated
stage in the catalog), peak RSS per worker (VmHWM of the worker processes)
and each firm's share of done deliveries at 25/50/75% of the wall time (fair
share). Needs PostgreSQL (``--pg``) and RabbitMQ for the cluster rows.
``--storage s3`` puts the cluster rows' files in an S3-compatible object
store: moto's S3 server, started on loopback for the run and stopped by its
pid (``moto[server]``, the cluster extra); ``--storage local`` keeps them
under the lab's home.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMS = ["urn:datalab:bavaria-spindle:spindle-telemetry", "urn:datalab:lyon-presses:press-line",
         "urn:datalab:oulu-pumps:pump-telemetry", "urn:datalab:open-benchmarks:cmapss-fd001"]


def _iso(x: str) -> float:
    return dt.datetime.fromisoformat(x).timestamp()


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pgid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getpgid(int(p.name)) == pgid:
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def run_config(profile: str, workers: int, deliveries: int, rows: int, pg: str | None, parallel: int,
               s3: dict[str, str] | None = None) -> dict:
    import sqlalchemy as sa

    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{profile}{workers}-"))
    env = {"DATALAB_HOME": str(tmp / "lab"), "DATALAB_ENGINE": "cpu", "DATALAB_PROFILE": profile,
           "DATALAB_CONTRACTS": str(ROOT / "data_contracts"), "PYTHONPATH": str(ROOT)}
    for k in ("DATALAB_STORAGE", "DATALAB_SCRATCH"):
        os.environ.pop(k, None)
    if s3 is not None:  # this configuration's files in the object store, under a prefix of its own
        env.update(s3, DATALAB_STORAGE=f"s3://scale/{tmp.name}", DATALAB_SCRATCH=str(tmp / "scratch"))
    db = None
    if profile == "cluster":
        db = f"dl_scale_{secrets.token_hex(4)}"
        admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{db}"'))
        env.update(DATALAB_CATALOG_URL=pg.rsplit("/", 1)[0] + f"/{db}", DATALAB_CELERY_QUEUE=f"scale-{secrets.token_hex(4)}")
    os.environ.update(env)
    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.intake import landing
    from datalab.store import catalog as cat
    from datalab.store import state
    from datalab.timeseries import sample

    cat._ENGINES.clear()
    cs = contract.load_all(settings().contracts_dir)
    pushed: list[tuple[str, str]] = []
    for i in range(deliveries):
        c = cs[FIRMS[i % len(FIRMS)]]
        # About ``rows`` readings each (a wide file holds one column per sensor), a week apart, so
        # no delivery repeats another's readings; the open benchmark's contract allows no out-of-range
        # value, so its deliveries are generated clean.
        n = rows // max(1, len(c.measurements)) if c.layout.shape == "wide" else rows
        p = sample.write(sample.generate(c, n, seed=i, start=dt.datetime(2026, 1, 5, tzinfo=dt.UTC) + dt.timedelta(days=7 * i),
                                         defects=sample.Defects.none() if c.tenant == "open-benchmarks" else None),
                         tmp / f"{i}.csv")
        r = landing.push(c, [p], actor=f"firm:{c.tenant}")
        pushed.append((r.delivery_id, c.tenant))
    procs = []
    for w in range(workers if profile == "cluster" else 0):
        procs.append(subprocess.Popen([sys.executable, "-m", "pipelines.cluster", "worker", "--name", f"w{w}"],
                                      cwd=ROOT, env={**os.environ}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
    if procs:
        time.sleep(8)  # workers connect to the broker
    hwm: dict[int, float] = {}
    t0 = time.time()
    cmd = [sys.executable, "-c", f"from pipelines import runner; runner.run_pending(parallel={parallel})"]
    runner = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ})
    while runner.poll() is None:
        for p in procs:
            for pid in _children(p.pid):
                hwm[pid] = max(hwm.get(pid, 0.0), _vm_hwm_mb(pid))
        if not procs:  # local: the one process that runs everything
            hwm[runner.pid] = max(hwm.get(runner.pid, 0.0), _vm_hwm_mb(runner.pid))
        time.sleep(0.5)
    wall = time.time() - t0
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    done, lat = [], []
    for d, tenant in pushed:
        st = state.get(d) or {}
        with cat.Catalog(settings().catalog_url).begin() as conn:
            received = conn.execute(sa.select(cat.deliveries.c.received_at).where(cat.deliveries.c.id == d)).scalar_one()
            upd = conn.execute(sa.select(cat.processing.c.updated_at).where(cat.processing.c.delivery_id == d)).scalar()
        if st.get("validation_ok") and upd:
            done.append((_iso(upd) - t0, tenant))
            lat.append(_iso(upd) - _iso(received))
    share = {}
    for q in (0.25, 0.5, 0.75, 1.0):
        share[f"{int(q * 100)}%"] = {t: sum(1 for x, tt in done if tt == t and x <= q * wall) for t in sorted({t for _, t in pushed})}
    lat.sort()
    res = {"profile": profile, "workers": workers, "storage": "s3" if s3 else "local", "deliveries": deliveries,
           "rows": rows, "validated": len(done),
           "wall_s": round(wall, 1), "deliveries_per_min": round(len(done) / wall * 60, 2),
           "p50_latency_s": round(statistics.median(lat), 1) if lat else None,
           "p95_latency_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
           "peak_rss_mb_per_worker_process": round(max(hwm.values()), 1) if hwm else None,
           "done_by_firm_over_time": share}
    cat._ENGINES.clear()
    if db:
        with sa.create_engine(pg, isolation_level="AUTOCOMMIT").connect() as c:
            c.execute(sa.text(f'DROP DATABASE "{db}" WITH (FORCE)'))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deliveries", type=int, default=9)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--configs", default="local:0,cluster:1,cluster:2")
    ap.add_argument("--parallel", type=int, default=4, help="runs driven at once in the cluster profile")
    ap.add_argument("--storage", choices=("local", "s3"), default="local",
                    help="where the cluster rows keep their files (s3: moto's S3 server on loopback)")
    ap.add_argument("--firms", type=int, default=len(FIRMS), help=f"time-series firms pushing (1-{len(FIRMS)})")
    a = ap.parse_args()
    del FIRMS[max(1, a.firms):]
    out = []
    sys.path.insert(0, str(ROOT))
    from tests.s3_harness import moto_s3  # the tests' S3 server (moto, on loopback)

    with moto_s3("scale", key="bench") if a.storage == "s3" else contextlib.nullcontext() as s3:
        for cfg in a.configs.split(","):
            profile, workers = cfg.split(":")
            r = run_config(profile, int(workers), a.deliveries, a.rows, a.pg, a.parallel,
                           s3 if profile == "cluster" else None)
            print(json.dumps(r), flush=True)
            out.append(r)
    c1 = next((r for r in out if r["profile"] == "cluster" and r["workers"] == 1), None)
    c2 = next((r for r in out if r["profile"] == "cluster" and r["workers"] == 2), None)
    if c1 and c2 and c1["deliveries_per_min"]:
        eff = c2["deliveries_per_min"] / (2 * c1["deliveries_per_min"])
        per = c1["deliveries_per_min"]
        print(json.dumps({"scaling_efficiency_1_to_2": round(eff, 2),
                          "extrapolation_only": {"8_nodes_deliveries_per_min": round(8 * per * eff, 1),
                                                 "64_nodes_deliveries_per_min": round(64 * per * eff, 1)}}))


if __name__ == "__main__":
    main()
