"""Three lab sites on loopback, end to end (issue 18): browse, replicate, query, withdraw.

    PYTHONPATH=. .venv/bin/python scripts/federated_demo.py [--base /tmp/dl-fed] [--rows 600] [--keep]

munich publishes plant-telemetry (residency DE, confidential); stuttgart (DE)
replicates it (`datalab replicate`: a DSP negotiation, then the transfer) and
pulls the replica; kajaani (FI) is refused by residency
and answered by compute-to-data; then a firm withdraws at munich and the
replica at stuttgart goes. Each step runs the real ``datalab`` command as the
site it belongs to and prints what happened there. Servers are started and
stopped by pid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SITES = {"munich": "DE", "stuttgart": "DE", "kajaani": "FI"}
EXTRA = "  - {name: stuttgart, country: DE, region: EU, operator: demo site in DE, max_classification: restricted}\n"
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(base: Path, site: str, ports: dict[str, int]) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DATALAB_", "DAGSTER_"))}
    e.update(DATALAB_HOME=str(base / site), DATALAB_CONTRACTS=str(base / "contracts"), DATALAB_SITE=site,
             DATALAB_SITE_URL=f"http://127.0.0.1:{ports[site]}", DATALAB_ENGINE="cpu", PYTHONPATH=str(ROOT),
             DAGSTER_HOME=str(base / site / "dagster"), DATALAB_OUTBOX_INTERVAL="0.5", DATALAB_OUTBOX_MAX_BACKOFF="2")
    return e


def dl(site: str, *args: str, base: Path, ports: dict[str, int], check: bool = True) -> str:
    """Run ``datalab ARGS`` as ``site`` and print it like a terminal would."""
    print(f"\n[{site}]$ datalab {' '.join(args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "datalab.cli.commands", *args], env=env(base, site, ports),
                       capture_output=True, text=True, timeout=300)
    text = (r.stdout + r.stderr).rstrip()
    print("  " + text.replace("\n", "\n  "), flush=True)
    if check and r.returncode != 0:
        raise SystemExit(f"datalab {' '.join(args)} failed at {site} ({r.returncode})")
    return r.stdout


def publish_at_munich(base: Path, ports: dict[str, int], rows: int) -> None:
    """Push one spindle delivery, run the pipelines, publish plant-telemetry (in-process, as munich)."""
    os.environ.update(env(base, "munich", ports))
    from datalab.contracts import contract as contracts_mod
    from datalab.intake import landing
    from datalab.store.publish import publish
    from datalab.timeseries import sample
    from pipelines import runner

    cs = contracts_mod.load_all(base / "contracts")
    start = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    p = sample.write(sample.generate(cs[SPINDLE], rows, seed=1, start=start, defects=sample.Defects.none()),
                     base / "spindle-1.csv")
    assert landing.push(cs[SPINDLE], [p], actor="firm:bavaria-spindle").accepted
    runs = runner.run_pending(SPINDLE)
    assert all(r.validation_ok for r in runs), runs
    res = publish("plant-telemetry", actor="demo")
    print(f"[munich] published plant-telemetry@{res.version}: {res.message}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, default=Path("/tmp/datalab-federation-demo"))
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--keep", action="store_true", help="leave the sites running state on disk (servers always stop)")
    a = ap.parse_args()
    base: Path = a.base.resolve()
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(ROOT / "data_contracts", base / "contracts")
    with open(base / "contracts" / "sites.yaml", "a") as f:
        f.write(EXTRA)
    ports = {s: port() for s in SITES}
    print("== 0. munich publishes a version")
    publish_at_munich(base, ports, a.rows)

    print("\n== 1. identities and peers (each operator registers the others' keys)")
    keys = {s: json.loads(dl(s, "site", "show", "--json", base=base, ports=ports))["public_key"] for s in SITES}
    for s in SITES:
        for o in SITES:
            if o != s:
                dl(s, "peer", "add", o, f"http://127.0.0.1:{ports[o]}", "--key", keys[o], base=base, ports=ports)

    procs: dict[str, subprocess.Popen] = {}
    try:
        for s in SITES:
            log = open(base / f"{s}.log", "ab")  # noqa: SIM115  (closed with the process)
            procs[s] = subprocess.Popen([sys.executable, "-m", "datalab.cli.commands", "serve", "--host", "127.0.0.1",
                                         "--port", str(ports[s])], env=env(base, s, ports), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        for s in SITES:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{ports[s]}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            print(f"[{s}] serving on http://127.0.0.1:{ports[s]}")

        print("\n== 2. browse: the federated catalog")
        dl("stuttgart", "catalog", "--federated", "--purpose", "research", base=base, ports=ports)

        print("\n== 3. replicate (negotiate, then transfer): stuttgart (DE) gets a replica, kajaani (FI) is refused by residency")
        dl("stuttgart", "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "research", base=base, ports=ports)
        dl("kajaani", "replicate", "munich", "plant-telemetry@1.0.0", "--purpose", "research", base=base, ports=ports,
           check=False)

        print("\n== 4. compute-to-data answers kajaani instead: aggregates only, small groups suppressed")
        dl("kajaani", "query", "munich", "plant-telemetry@1.0.0", "--purpose", "research", "--group-by", "entity,sensor",
           "--agg", "mean(value),count()", base=base, ports=ports)
        dl("kajaani", "query", "munich", "plant-telemetry@1.0.0", "--purpose", "research", "--group-by",
           "entity,sensor,time:1s", "--agg", "mean(value)", base=base, ports=ports)

        print("\n== 5. pull the replica at stuttgart: for the agreed purpose only")
        dl("stuttgart", "pull", "plant-telemetry@1.0.0", "--purpose", "research", "--to", str(base / "pulled"),
           base=base, ports=ports, check=False)
        dl("stuttgart", "pull", "plant-telemetry@1.0.0", "--purpose", "predictive-maintenance", "--to",
           str(base / "pulled"), base=base, ports=ports, check=False)

        print("\n== 6. the firm withdraws at munich; the replica at stuttgart goes")
        dl("munich", "contract", "withdraw", SPINDLE, "--reason", "demo: the firm leaves", base=base, ports=ports,
           check=False)
        for _ in range(100):  # munich's service delivers the event in the background
            out = json.loads(subprocess.run([sys.executable, "-m", "datalab.cli.commands", "outbox", "--json"],
                                            env=env(base, "munich", ports), capture_output=True, text=True).stdout)
            if out and all(o["state"] == "confirmed" for o in out):
                break
            time.sleep(0.3)
        dl("munich", "outbox", base=base, ports=ports)
        dl("stuttgart", "list", base=base, ports=ports)
        left = [p for p in (base / "stuttgart" / "versions" / "plant-telemetry").rglob("*.parquet")]
        print(f"[stuttgart] parquet files of the replica left under its home: {len(left)}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(15)
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
