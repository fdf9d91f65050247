"""Live MQTT streams landed as deliveries (issue 22): at-least-once, duplicates dropped by key, restarts lose nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import ROOT, SPINDLE

SENSORS = ["spindle_temp", "oil_pressure", "vibration", "spindle_speed"]
UNITS = {"spindle_temp": "Cel", "oil_pressure": "bar", "vibration": "mm/s", "spindle_speed": "/min"}


def reading(i: int) -> dict:
    sensor = SENSORS[i % 4]
    sec, ms = divmod(i // 4, 1000)
    return {"id": f"gw1-{i:06d}", "machine_id": f"BSW-M{1 + i % 3:02d}",
            "ts": f"2024-05-01T08:{sec // 60 % 60:02d}:{sec % 60:02d}.{ms:03d}+00:00".replace("08:", f"{8 + sec // 3600:02d}:", 1),
            "sensor": sensor, "value": 20.0 + (i % 97) / 10, "unit": UNITS[sensor]}


def test_spool_seals_pushes_and_repushes_the_same_bytes(lab, contracts):
    """A batch sealed but not pushed before a crash is pushed again with the same bytes: one receipt, no double rows."""
    from datalab.intake.stream import StreamIngestor

    c = contracts[SPINDLE]
    ing = StreamIngestor(c, rows=50, seconds=3600)
    for i in range(120):
        ing.offer(json.dumps(reading(i)).encode())
    ing.offer(json.dumps(reading(7)).encode())  # resent by the gateway: dropped by its key
    ing.offer(b"{not json")
    ing.offer(json.dumps({**reading(500), "sensor": "coolant"}).encode())
    assert ing.duplicates == 1
    first = ing.spool.seal(50)
    receipts = ing.deliver()  # pushes the sealed batch and seals/pushes the next full one
    assert [r["rows"] for r in receipts] == [50, 50] and all(r["status"] == "accepted" for r in receipts)
    # the crash: batch 1 is marked open again as if the push had not been recorded
    ing.spool._db.execute("UPDATE batches SET status='sealed' WHERE id=?", (first,))
    again = ing.deliver()
    assert again[0]["delivery_id"] == receipts[0]["delivery_id"] and again[0]["duplicate_push"]
    last = ing.deliver(final=True)[-1]
    assert last["rows"] == 20 and [x["reason"][:8] for x in last["rejected_lines"]] == ["not JSON", "sensor '"]
    raw = pl.concat([pl.read_parquet(p) for p in (lab / "raw").rglob("*.parquet")])
    assert len(raw) == 120 and raw.select("entity", "time", "sensor").n_unique() == 120


def _broker() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            return True
    except OSError:
        return False


def test_mqtt_10000_readings_with_a_lab_restart_land_exactly_once(lab, tmp_path):
    if not _broker():
        pytest.skip("no MQTT broker answers on 127.0.0.1:1883 (Mosquitto)")
    import paho.mqtt.client as mqtt

    topic, cid = f"datalab-test/{uuid.uuid4().hex}/readings", f"datalab-test-{uuid.uuid4().hex[:12]}"
    # the lab's persistent session exists before the gateway publishes (as after the lab's first start)
    sess = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    sess.connect("127.0.0.1", 1883)
    sess.loop_start()
    sess.subscribe(topic, qos=1)[1]
    time.sleep(0.3)
    sess.loop_stop()
    sess.disconnect()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "datalab.cli.commands", "stream", SPINDLE, "--mqtt", "mqtt://127.0.0.1:1883", "--topic", topic,
           "--rows", "1000", "--seconds", "1", "--client-id", cid, "--idle-exit", "2"]
    spool = lab / "streams" / "bavaria-spindle" / "spindle-telemetry" / "spool.sqlite"

    def stored() -> int:
        if not spool.exists():
            return 0
        try:
            with sqlite3.connect(spool, timeout=10) as db:
                return db.execute("SELECT count(*) FROM readings").fetchone()[0]
        except sqlite3.OperationalError:  # the lab is creating the spool right now
            return 0

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gw-{uuid.uuid4().hex[:8]}")
    pub.connect("127.0.0.1", 1883)
    pub.loop_start()

    def publish(ids: range, wait: bool = True) -> None:
        for lo in range(ids.start, ids.stop, 250):  # the broker queues at most 1000 per session: keep pace
            infos = [pub.publish(topic, json.dumps(reading(i)), qos=1) for i in range(lo, min(lo + 250, ids.stop))]
            for inf in infos:
                inf.wait_for_publish(10)
            deadline = time.time() + 30
            while wait and stored() < min(lo + 250, ids.stop) - 500 and time.time() < deadline:
                time.sleep(0.02)

    lab_proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        publish(range(0, 5000))
        deadline = time.time() + 60
        while stored() < 5000 and lab_proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # the broker keeps at most 1000 per offline session (max_queued_messages)
        assert stored() == 5000, "the lab did not store the first 5,000 readings"
        lab_proc.send_signal(signal.SIGKILL)  # the lab dies mid-stream, without closing anything
        lab_proc.wait(10)
        publish(range(5000, 5600), wait=False)  # while the lab is down: the broker keeps them for its session
        publish(range(4500, 4800), wait=False)  # the gateway resends some: duplicates
        lab_proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while stored() < 5600 and time.time() < deadline:  # the restarted lab drains the broker's queue first
            time.sleep(0.05)
        publish(range(5600, 10_000))
        out, _ = lab_proc.communicate(timeout=120)
    finally:
        pub.loop_stop()
        pub.disconnect()
        if lab_proc.poll() is None:
            lab_proc.kill()
    assert lab_proc.returncode == 0, out.decode()[-2000:]
    with sqlite3.connect(spool) as db:
        assert db.execute("SELECT count(*), count(DISTINCT key) FROM readings").fetchone() == (10_000, 10_000)
        assert db.execute("SELECT count(*) FROM readings WHERE batch IS NULL OR reason IS NOT NULL").fetchone()[0] == 0
        batches = db.execute("SELECT status, delivery_id, rows FROM batches").fetchall()
    assert all(s == "closed" for s, _, _ in batches)
    receipts = [json.loads(p.read_text()) for p in sorted(spool.parent.glob("receipts/*.json"))]
    assert receipts and all(r["status"] == "accepted" for r in receipts)
    raw = pl.concat([pl.read_parquet(p) for p in Path(lab / "raw").rglob("*.parquet")])
    assert len(raw) == 10_000 and raw.select("entity", "time", "sensor").n_unique() == 10_000


def test_stream_cli_refuses_a_wrong_contract_and_a_silent_broker(lab):
    from typer.testing import CliRunner

    from datalab.cli.commands import app
    from tests.conftest import CMAPSS

    run = CliRunner()
    res = run.invoke(app, ["stream", CMAPSS, "--mqtt", "mqtt://127.0.0.1:1", "--topic", "t"])
    assert res.exit_code == 2 and "a stream needs a time-series contract of the long layout" in res.output
    res = run.invoke(app, ["stream", SPINDLE, "--mqtt", "mqtt://127.0.0.1:1", "--topic", "t"])
    assert res.exit_code == 1 and "mqtt://127.0.0.1:1: the MQTT broker does not answer" in res.output


def test_opcua_changes_while_the_lab_is_down_are_recovered_from_history(lab, contracts):
    """OPC UA as second transport: a historizing server's changes made while the lab is away land, once each."""
    import asyncio
    import datetime as dt
    import threading

    from asyncua import Server, ua

    from datalab.intake.stream import StreamIngestor
    from datalab.intake.stream_opcua import NodeMap, run_opcua

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"opc.tcp://127.0.0.1:{port}/plc/"
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_server(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    srv = Server()
    on_server(srv.init())
    srv.set_endpoint(url)

    async def setup() -> tuple[Any, Any]:
        idx = await srv.register_namespace("urn:bsw:plc")
        obj = await srv.nodes.objects.add_object(idx, "M01")
        temp = await obj.add_variable(idx, "Temp", 20.0)
        vib = await obj.add_variable(idx, "Vib", 1.0)
        await srv.start()
        for v in (temp, vib):
            await srv.historize_node_data_change(v, period=None, count=100_000)
        return temp, vib

    temp, vib = on_server(setup())
    base = dt.datetime.now(dt.UTC)  # source times of the samples: after the initial values, increasing

    async def write(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            ts = base + dt.timedelta(milliseconds=i)
            for v, x in ((temp, 40 + i / 100), (vib, 1 + i / 1000)):
                await v.write_value(ua.DataValue(ua.Variant(x, ua.VariantType.Double), SourceTimestamp=ts))
            if i % 50 == 0:
                await asyncio.sleep(0.01)

    nodes = [NodeMap.parse(f"{temp.nodeid.to_string()}=BSW-M01/spindle_temp/Cel"),
             NodeMap.parse(f"{vib.nodeid.to_string()}=BSW-M01/vibration/mm/s")]
    assert nodes[1] == NodeMap(vib.nodeid.to_string(), "BSW-M01", "vibration", "mm/s")
    c = contracts[SPINDLE]

    def lab_run(stop: threading.Event | None, idle: float | None) -> threading.Thread:
        ing = StreamIngestor(c, rows=200, seconds=0.5)
        th = threading.Thread(target=run_opcua, args=(ing, url, nodes), kwargs={"stop": stop, "idle_exit": idle}, daemon=True)
        th.start()
        return th

    spool = lab / "streams" / "bavaria-spindle" / "spindle-telemetry" / "spool.sqlite"

    def stored() -> int:
        try:
            with sqlite3.connect(spool, timeout=10) as db:
                return db.execute("SELECT count(*) FROM readings").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    try:
        stop = threading.Event()
        first = lab_run(stop, None)
        deadline = time.time() + 20
        while stored() < 2 and time.time() < deadline:  # subscribed: the two current values arrived
            time.sleep(0.05)
        on_server(write(0, 300))
        while stored() < 602 and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        first.join(20)
        on_server(write(300, 600))  # the lab is away
        second = lab_run(None, 3.0)
        deadline = time.time() + 20
        while stored() < 1202 and time.time() < deadline:
            time.sleep(0.05)
        on_server(write(600, 700))
        second.join(30)
    finally:
        on_server(srv.stop())
        loop.call_soon_threadsafe(loop.stop)
    with sqlite3.connect(spool) as db:
        assert db.execute("SELECT count(*), count(DISTINCT key) FROM readings").fetchone() == (1402, 1402)
        assert db.execute("SELECT count(*) FROM readings WHERE batch IS NULL OR reason IS NOT NULL").fetchone()[0] == 0
    raw = pl.concat([pl.read_parquet(p) for p in Path(lab / "raw").rglob("*.parquet")])
    assert len(raw) == 1402 and raw.select("entity", "time", "sensor").n_unique() == 1402
    assert raw.filter(pl.col("sensor") == "vibration")["raw_unit"].unique().to_list() == ["mm/s"]
