"""Federation costs: DSP transfer throughput beside a plain HTTP copy, federated catalog latency.

    PYTHONPATH=. .venv/bin/python benchmarks/federation.py --rows 10000000

Builds munich, stuttgart and kajaani on loopback as scripts/federated_demo.py
does (munich publishes plant-telemetry from ``--rows`` spindle readings),
then measures

* ``datalab transfer`` of that version from munich to stuttgart (data address,
  streamed download, sha256 of every file, replica registration) in MB/s of
  Parquet, beside a plain HTTP copy of the same files (Python's
  ThreadingHTTPServer, httpx streaming to disk, no hashing, no policy);
* ``catalog --federated`` at stuttgart (local catalog plus two peers, signed
  requests, in parallel), p50 and p95 over ``--repeat`` calls.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import federated_demo as demo  # noqa: E402


def plain_copy(files: list[Path], dst: Path) -> float:
    """Seconds to copy ``files`` over loopback HTTP with a plain static server."""
    root = files[0].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    dst.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for f in files:
        with httpx.stream("GET", f"http://127.0.0.1:{srv.server_address[1]}/{f.name}") as r, open(dst / f.name, "wb") as out:
            for b in r.iter_bytes():
                out.write(b)
    took = time.perf_counter() - t0
    srv.shutdown()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--base", type=Path, default=Path("/tmp/datalab-federation-bench"))
    a = ap.parse_args()
    base = a.base.resolve()
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(ROOT / "data_contracts", base / "contracts")
    with open(base / "contracts" / "sites.yaml", "a") as f:
        f.write(demo.EXTRA)
    ports = {s: demo.port() for s in demo.SITES}
    t0 = time.perf_counter()
    demo.publish_at_munich(base, ports, a.rows)
    build_s = time.perf_counter() - t0
    from datalab.federation import identity

    keys = {}
    for s in demo.SITES:
        os.environ.update(demo.env(base, s, ports))
        keys[s] = identity.public_key_b64()
    for s in demo.SITES:
        os.environ.update(demo.env(base, s, ports))
        for o in demo.SITES:
            if o != s:
                identity.add_peer(o, f"http://127.0.0.1:{ports[o]}", keys[o])
    procs = {}
    try:
        for s in demo.SITES:
            procs[s] = subprocess.Popen([sys.executable, "-m", "datalab.cli.commands", "serve", "--host", "127.0.0.1",
                                         "--port", str(ports[s])], env=demo.env(base, s, ports),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for s in demo.SITES:
            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{ports[s]}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
        os.environ.update(demo.env(base, "stuttgart", ports))
        from datalab.federation.client import federated_catalog, negotiate, transfer

        n = negotiate("munich", "plant-telemetry@1.0.0", "research")
        t0 = time.perf_counter()
        m = transfer(n.agreement["@id"], timeout=120)
        dsp_s = time.perf_counter() - t0
        size = sum(f.bytes for f in m.files)
        mm = json.loads((base / "munich" / "versions" / "plant-telemetry" / "1.0.0" / "manifest.json").read_text())
        src = [base / "munich" / f["path"] for f in mm["files"]]
        flat = base / "flat"
        flat.mkdir()
        for i, p in enumerate(src):
            shutil.copyfile(p, flat / f"part-{i:05d}.parquet")
        plain_s = plain_copy(sorted(flat.iterdir()), base / "plain-copy")
        lat = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            rows, failed = federated_catalog(timeout=10)
            lat.append(time.perf_counter() - t0)
            assert rows and not failed, failed
        lat.sort()
        print(json.dumps({
            "rows": m.rows, "files": len(m.files), "bytes": size, "build_s": round(build_s, 1),
            "dsp_transfer_s": round(dsp_s, 3), "dsp_transfer_MBps": round(size / dsp_s / 1e6, 1),
            "plain_http_s": round(plain_s, 3), "plain_http_MBps": round(size / plain_s / 1e6, 1),
            "catalog_federated_p50_ms": round(statistics.median(lat) * 1e3, 1),
            "catalog_federated_p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1e3, 1),
            "catalog_repeat": a.repeat, "sites": len(demo.SITES)}))
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(15)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
