"""Measurement formats and MQTT streams (issue 22): rows/s beside each library's own bulk read, memory, latency.

    .venv/bin/python benchmarks/formats.py --samples 10000000
    .venv/bin/python benchmarks/formats.py --memory          # peak RSS of a push against file size
    .venv/bin/python benchmarks/formats.py --mqtt 20000      # readings/s and p95 reading-to-receipt latency

For each format (MAT v5, MAT v7.3, HDF5, TDMS, MDF 4, Parquet) one file of
``--samples`` samples in two channels is written with the format's own
writer, then read three ways:

* floor: the library's own bulk read of both channels into numpy arrays
  (scipy.io.loadmat, h5py ``ds[:]``, npTDMS ``TdmsFile.read``, asammdf
  ``MDF.get``, pyarrow ``read_table``), the least any reader can do;
* reader: the lab's reader to the long table (``TimeseriesReader.batches``:
  channel map, unit/rate checks, time axis, attributes), nothing written;
* push: the whole push (staging copy and hash, sniff, read, raw Parquet
  table, receipt) in a temporary lab.

Rows are long-table rows (one per sample). ``--memory`` runs the reader in a
child process per file size (a whole push) and prints the child's peak RSS. ``--mqtt``
publishes readings at QoS 1 to the local Mosquitto and runs the stream
in-process (spool, deliveries every ``--rows`` readings or 1 s), reporting
readings/s from the first publish to the last receipt and the p95 of the
time from a reading's publish to its delivery's receipt.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FORMATS = ("mat", "mat73", "hdf5", "tdms", "mdf4", "parquet")
START = np.datetime64("2024-05-01T08:00:00")


def write(fmt: str, path: Path, n: int) -> Path:
    """A file of ``fmt`` holding two channels of ``n // 2`` samples at 1 kHz."""
    half = n // 2
    a = np.sin(np.arange(half) / 100.0)
    b = np.cos(np.arange(half) / 100.0)
    if fmt == "mat":
        import scipy.io

        scipy.io.savemat(path, {"a": a.reshape(-1, 1), "b": b.reshape(-1, 1)})
    elif fmt in ("mat73", "hdf5"):
        import h5py

        with h5py.File(path, "w", userblock_size=512 if fmt == "mat73" else 0) as f:
            for k, v in (("a", a), ("b", b)):
                f.create_dataset(k, data=v.reshape(1, -1) if fmt == "mat73" else v, chunks=True)
        if fmt == "mat73":
            with open(path, "r+b") as fh:
                fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon May  1 08:00:00 2024 HDF5 schema 1.00 .")
    elif fmt == "tdms":
        from nptdms import ChannelObject, TdmsWriter

        props = {"wf_increment": 0.001, "wf_start_time": START}
        with TdmsWriter(str(path)) as w:
            for lo in range(0, half, 1_000_000):  # segments, as a DAQ writes them
                w.write_segment([ChannelObject("g", k, v[lo:lo + 1_000_000], properties=props) for k, v in (("a", a), ("b", b))])
    elif fmt == "mdf4":
        from asammdf import MDF, Signal

        m = MDF(version="4.10")
        t = np.arange(half) / 1000.0
        m.append([Signal(a, t, name="a", unit="V"), Signal(b, t, name="b", unit="V")])
        m.save(path, overwrite=True)
        m.close()
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"a": a, "b": b}), path)
    return path


def floor(fmt: str, path: Path) -> int:
    """The library's own bulk read of both channels into numpy; samples read."""
    if fmt == "mat":
        import scipy.io

        d = scipy.io.loadmat(path)
        return d["a"].size + d["b"].size
    if fmt in ("mat73", "hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            return f["a"][:].size + f["b"][:].size
    if fmt == "tdms":
        from nptdms import TdmsFile

        t = TdmsFile.read(path)
        return len(t["g"]["a"][:]) + len(t["g"]["b"][:])
    if fmt == "mdf4":
        from asammdf import MDF

        with MDF(path) as m:
            return len(m.get("a").samples) + len(m.get("b").samples)
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return len(t.column("a").to_numpy()) + len(t.column("b").to_numpy())


def contract_for(fmt: str, tmp: Path):
    from datalab.contracts import contract

    layout = {"format": "mat" if fmt == "mat73" else fmt, "entity_value": "bench",
              "time": {"base": "index"} if fmt in ("mat", "mat73", "hdf5", "parquet") else
              {"base": "column", "column": "master"} if fmt == "mdf4" else {"base": "rate"},
              "channels": [{"property": "a", "source": "a"}, {"property": "b", "source": "b"}]}
    integer = fmt in ("mat", "mat73", "hdf5", "parquet")
    props = [
        {"name": "rig", "logicalType": "string", "customProperties": [{"property": "role", "value": "entity"}]},
        {"name": "t", "logicalType": "integer" if integer else "timestamp", "customProperties": [{"property": "role", "value": "time"}]},
        {"name": "time_base", "logicalType": "string", "customProperties": [{"property": "role", "value": "attribute"}]},
        {"name": "sample_rate_hz", "logicalType": "number", "customProperties": [{"property": "role", "value": "attribute"}]},
        {"name": "a", "logicalType": "number", "customProperties": [{"property": "unit", "value": "V"}]},
        {"name": "b", "logicalType": "number", "customProperties": [{"property": "unit", "value": "V"}]},
    ]
    if fmt == "mdf4":
        layout["time"]["start"] = "2024-05-01T08:00:00Z"
    doc = {"apiVersion": "v3.0.2", "kind": "DataContract", "id": f"urn:datalab:bench:{fmt}", "version": "1.0.0",
           "status": "active", "tenant": "bench", "dataProduct": f"bench-{fmt}",
           "schema": [{"name": "readings", "properties": props}],
           "customProperties": [{"property": "kind", "value": "timeseries"}, {"property": "layout", "value": layout},
                                {"property": "sovereignty", "value": {"residency": ["EEA"], "purposes": ["research"]}}]}
    p = tmp / f"{fmt}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return contract.load(p)


def read_only(c, path: Path) -> int:
    from datalab.intake.formats import sniff
    from datalab.timeseries.readers import TimeseriesReader

    r = TimeseriesReader(c, path, path.name, sniff(path, path.name))
    rows = sum(len(b) for b in r.batches())
    if r.problems:
        raise SystemExit(f"{path}: {r.problems.reasons()}")
    return rows


def bench(samples: int) -> list[dict]:
    from datalab.intake.landing import push

    out = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["DATALAB_HOME"] = str(tmp / "lab")
        for fmt in FORMATS:
            path = write(fmt, tmp / f"bench.{ {'mat73': 'mat', 'mdf4': 'mf4'}.get(fmt, fmt)}", samples)
            c = contract_for(fmt, tmp)
            row: dict = {"format": fmt, "samples": samples, "bytes": path.stat().st_size}
            for what in ("floor", "reader", "push"):
                t0 = time.perf_counter()
                n = floor(fmt, path) if what == "floor" else read_only(c, path) if what == "reader" else push(c, [path]).rows
                dt = time.perf_counter() - t0
                row[f"{what}_s"] = round(dt, 3)
                row[f"{what}_rows_per_s"] = round(n / dt)
            print(json.dumps(row), flush=True)
            out.append(row)
            path.unlink()
    return out


def memory() -> None:
    """Peak RSS of a whole push (read + raw table) in a child process, per file size.

    HDF5 and TDMS are read a chunk at a time, so the peak stays flat; a
    MAT v5 variable is one compressed element that scipy reads whole, so its
    peak grows with the largest variable (MAT v7.3 is HDF5: flat).
    """
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for fmt in ("hdf5", "tdms", "mat"):
            for n in (2_000_000, 20_000_000, 80_000_000):
                path = write(fmt, tmp / f"m.{fmt}", n)
                code = (f"import os,sys; sys.path.insert(0,{str(ROOT)!r}); from pathlib import Path; "
                        f"os.environ['DATALAB_HOME'] = {str(tmp / 'lab')!r}; "
                        f"from benchmarks.formats import contract_for; from datalab.intake.landing import push; "
                        f"c = contract_for({fmt!r}, Path({str(tmp)!r})); n = push(c, [Path({str(path)!r})]).rows; "
                        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]; "
                        "print(n, int(hwm) // 1024)")  # VmHWM: this image's peak (ru_maxrss survives exec)
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                rows, peak = res.stdout.split()
                print(json.dumps({"format": fmt, "samples": n, "file_mb": round(path.stat().st_size / 2**20),
                                  "rows": int(rows), "peak_rss_mb": int(peak)}), flush=True)
                path.unlink()


def mqtt(n: int, rows: int) -> None:
    import sqlite3
    import uuid

    import paho.mqtt.client as m

    from datalab.contracts import contract as cmod
    from datalab.intake.stream import StreamIngestor, run_mqtt

    with tempfile.TemporaryDirectory() as d:
        os.environ["DATALAB_HOME"] = str(Path(d) / "lab")
        os.environ["DATALAB_CONTRACTS"] = str(ROOT / "data_contracts")
        c = cmod.find(cmod.load_all(ROOT / "data_contracts"), "urn:datalab:bavaria-spindle:spindle-telemetry")
        topic, cid = f"bench/{uuid.uuid4().hex}", f"bench-{uuid.uuid4().hex[:10]}"
        ing = StreamIngestor(c, rows=rows, seconds=1.0)
        stop = threading.Event()
        th = threading.Thread(target=run_mqtt, args=(ing, "mqtt://127.0.0.1:1883", topic),
                              kwargs={"client_id": cid, "stop": stop}, daemon=True)
        th.start()
        time.sleep(1.0)
        pub = m.Client(m.CallbackAPIVersion.VERSION2, client_id=f"gw-{uuid.uuid4().hex[:8]}")
        pub.connect("127.0.0.1", 1883)
        pub.loop_start()
        sent: dict[str, float] = {}
        sensors = ["spindle_temp", "oil_pressure", "vibration", "spindle_speed"]
        t0 = time.time()
        spool = ing.spool.path
        for lo in range(0, n, 500):
            infos = []
            for i in range(lo, min(n, lo + 500)):
                k = f"r{i}"
                sec, ms = divmod(i // 4, 1000)
                msg = {"id": k, "machine_id": "BSW-M01", "sensor": sensors[i % 4], "value": float(i % 50), "unit": "1",
                       "ts": f"2024-05-01T{8 + sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}.{ms:03d}Z"}
                sent[k] = time.time()
                infos.append(pub.publish(topic, json.dumps(msg), qos=1))
            for inf in infos:
                inf.wait_for_publish(10)
            with sqlite3.connect(spool) as db:  # keep within the broker's 1000 queued per session
                while db.execute("SELECT count(*) FROM readings").fetchone()[0] < min(n, lo + 500) - 500:
                    time.sleep(0.005)
        while True:
            with sqlite3.connect(spool) as db:
                done = db.execute("SELECT count(*) FROM readings r JOIN batches b ON r.batch=b.id "
                                  "WHERE b.status='closed'").fetchone()[0]
            if done >= n:
                break
            time.sleep(0.05)
        t1 = time.time()
        with sqlite3.connect(spool) as db:
            lat = np.array([closed - sent[k] for k, closed in db.execute(
                "SELECT r.key, b.closed_at FROM readings r JOIN batches b ON r.batch=b.id")])
        stop.set()
        th.join(30)
        pub.loop_stop()
        pub.disconnect()
        print(json.dumps({"mqtt_readings": n, "rows_per_delivery": rows, "readings_per_s": round(n / (t1 - t0)),
                          "p50_latency_s": round(float(np.percentile(lat, 50)), 3),
                          "p95_latency_s": round(float(np.percentile(lat, 95)), 3)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--mqtt", type=int, default=0, help="readings to publish (0: skip)")
    ap.add_argument("--rows", type=int, default=1000, help="MQTT: readings per delivery")
    a = ap.parse_args()
    if a.memory:
        memory()
    elif a.mqtt:
        mqtt(a.mqtt, a.rows)
    else:
        bench(a.samples)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
