"""Live streams: readings published to an MQTT topic, landed as deliveries like pushed files.

``datalab stream CONTRACT --mqtt mqtt://HOST:PORT --topic T`` subscribes
with a persistent session (fixed client id, clean_session false) at QoS 1,
so the broker keeps what arrives while the lab is down. Each message is one
reading, a JSON object with the contract's columns (its long layout) plus a
delivery key (``--key``, default ``id``). It is checked at once, written to
the stream's spool (SQLite, WAL) and only then acknowledged: at-least-once.
The spool's unique key drops duplicates, whether the gateway resent them or
the broker redelivered them after a restart.

Every ``--rows`` readings or ``--seconds`` seconds the pending readings are
sealed into a batch (one transaction), written as a JSON Lines file and
pushed through ``landing.push``: the same checks, receipt, raw table and
audit entry as a pushed file. A batch sealed but not yet pushed when the lab
stopped is pushed again on restart with the same bytes, which landing
answers with the first receipt, so no reading lands twice. Malformed
messages are kept in the spool and listed, with their reasons, as the
rejected lines of their batch's stream receipt (``streams/<contract>/``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from datalab.config import Settings, safe_segment, settings
from datalab.contracts.contract import Contract

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL,
  reason TEXT, received_at REAL NOT NULL, batch INTEGER);
CREATE INDEX IF NOT EXISTS readings_pending ON readings(batch, seq);
CREATE TABLE IF NOT EXISTS batches (
  id INTEGER PRIMARY KEY, status TEXT NOT NULL, delivery_id TEXT, rows INTEGER, rejected INTEGER,
  sealed_at REAL NOT NULL, closed_at REAL);
"""


def stream_dir(contract: Contract, s: Settings) -> Path:
    return s.files_root / "streams" / safe_segment(contract.tenant, "tenant") / safe_segment(contract.product, "product")


class Spool:
    """The stream's durable buffer: readings by key, and the batches they were sealed into."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # survives the process dying; fsync at checkpoints
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def add(self, key: str, payload: str, reason: str | None) -> bool:
        """Store one reading; False when its key was seen before (a duplicate, dropped)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO readings(key, payload, reason, received_at) VALUES (?,?,?,?)",
                                   (key, payload, reason, time.time()))
            return cur.rowcount == 1

    def pending(self) -> tuple[int, float | None]:
        """(readings not yet sealed, arrival time of the oldest)."""
        with self._lock:
            n, oldest = self._db.execute("SELECT count(*), min(received_at) FROM readings WHERE batch IS NULL").fetchone()
        return int(n), oldest

    def seal(self, limit: int) -> int | None:
        """Seal up to ``limit`` pending readings (oldest first) into a new batch; its id, or None."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT seq FROM readings WHERE batch IS NULL ORDER BY seq LIMIT 1 OFFSET ?",
                                        (limit - 1,)).fetchone()
                bound = last[0] if last else self._db.execute("SELECT max(seq) FROM readings WHERE batch IS NULL").fetchone()[0]
                if bound is None:
                    self._db.execute("ROLLBACK")
                    return None
                bid = self._db.execute("INSERT INTO batches(status, sealed_at) VALUES ('sealed', ?)", (time.time(),)).lastrowid
                self._db.execute("UPDATE readings SET batch=? WHERE batch IS NULL AND seq<=?", (bid, bound))
                self._db.execute("COMMIT")
                return bid
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def sealed(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM batches WHERE status='sealed' ORDER BY id")]

    def rows(self, batch: int) -> list[tuple[int, str, str, str | None]]:
        with self._lock:
            return self._db.execute("SELECT seq, key, payload, reason FROM readings WHERE batch=? ORDER BY seq", (batch,)).fetchall()

    def close_batch(self, batch: int, delivery_id: str | None, rows: int, rejected: int) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET status='closed', delivery_id=?, rows=?, rejected=?, closed_at=? WHERE id=?",
                             (delivery_id, rows, rejected, time.time(), batch))

    def close(self) -> None:
        self._db.close()


@dataclass
class Checked:
    key: str
    line: str | None  # the reading as the delivery's JSON line (None: malformed)
    reason: str | None


class StreamIngestor:
    """Checks, spools and delivers the readings of one contract's stream (any transport feeds ``offer``)."""

    def __init__(self, contract: Contract, rows: int = 10_000, seconds: float = 60.0, key: str = "id",
                 s: Settings | None = None, name: str = "mqtt"):
        if not contract.series or contract.layout.shape != "long" or contract.layout.format is not None:
            raise ValueError(f"contract {contract.id}: a stream needs a time-series contract of the long layout "
                             "(one reading per message: entity, time, sensor, value)")
        self.c, self.s = contract, s or settings()
        self.rows, self.seconds, self.key, self.name = rows, seconds, key, name
        self.dir = stream_dir(contract, self.s)
        self.spool = Spool(self.dir / "spool.sqlite")
        lay = contract.layout
        self.required = {contract.entity.source_name, contract.time.source_name, lay.sensor_column, lay.value_column}
        self.allowed = self.required | ({lay.unit_column} if lay.unit_column else set()) | {a.source_name for a in contract.attributes}
        self.sensors = {m.source_name for m in contract.measurements}
        self.duplicates = 0

    def check(self, payload: bytes) -> Checked:
        """The reading's delivery key and JSON line, or why it is malformed (kept, never dropped)."""
        text = payload.decode("utf-8", "replace")
        fallback = "sha256:" + hashlib.sha256(payload).hexdigest()
        try:
            obj = json.loads(text)
        except ValueError as e:
            return Checked(fallback, None, f"not JSON ({e})")
        if not isinstance(obj, dict):
            return Checked(fallback, None, "not a JSON object")
        key = obj.pop(self.key, None)
        key = str(key) if key is not None else fallback
        missing = sorted(self.required - set(obj))
        unknown = sorted(set(obj) - self.allowed)
        if missing:
            return Checked(key, None, f"required key(s) {missing} missing")
        if unknown:
            return Checked(key, None, f"key(s) {unknown} not in the contract (expected {sorted(self.allowed)})")
        if obj[self.c.layout.sensor_column] not in self.sensors:
            return Checked(key, None, f"sensor {obj[self.c.layout.sensor_column]!r} is not a measurement of the contract")
        value = obj[self.c.layout.value_column]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return Checked(key, None, f"value {value!r} is not a number")
        return Checked(key, json.dumps(obj, sort_keys=True, separators=(",", ":")), None)

    def offer(self, payload: bytes) -> bool:
        """Check and spool one message; True once it is durable (then the transport may acknowledge it)."""
        ch = self.check(payload)
        if not self.spool.add(ch.key, ch.line if ch.line is not None else payload.decode("utf-8", "replace"), ch.reason):
            self.duplicates += 1
        return True

    def due(self, now: float | None = None) -> bool:
        n, oldest = self.spool.pending()
        return n >= self.rows or (n > 0 and oldest is not None and (now or time.time()) - oldest >= self.seconds)

    def deliver(self, final: bool = False) -> list[dict[str, Any]]:
        """Seal what is due (everything when ``final``) and push every sealed batch; their stream receipts."""
        while self.due() or (final and self.spool.pending()[0]):
            if self.spool.seal(self.rows) is None:
                break
        return [self._push(b) for b in self.spool.sealed()]

    def _push(self, batch: int) -> dict[str, Any]:
        from datalab.intake import landing

        rows = self.spool.rows(batch)
        good = [(seq, line) for seq, _k, line, reason in rows if reason is None]
        bad = [{"seq": seq, "key": k, "payload": p[:500], "reason": r} for seq, k, p, r in rows if r is not None]
        rec = None
        if good:
            staging = self.dir / "outbox"
            staging.mkdir(parents=True, exist_ok=True)
            f = staging / f"{self.name}-{batch:08d}.jsonl"
            f.write_text("".join(line + "\n" for _, line in good))  # the same bytes on a retry: landing dedups
            rec = landing.push(self.c, [(f.name, f)], actor=f"stream:{self.name}", s=self.s)
            f.unlink(missing_ok=True)
        receipt = {
            "stream": self.name, "batch": batch, "contract": self.c.id,
            "delivery_id": rec.delivery_id if rec else None, "status": rec.status if rec else "no-readings",
            "duplicate_push": bool(rec and rec.duplicate), "rows": len(good), "rejected_lines": bad,
            "reasons": rec.reasons if rec else [], "first_seq": rows[0][0] if rows else None,
            "last_seq": rows[-1][0] if rows else None, "closed_at": time.time(),
        }
        out = self.dir / "receipts" / f"{batch:08d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(receipt, indent=1))
        self.spool.close_batch(batch, receipt["delivery_id"], len(good), len(bad))
        return receipt


def run_mqtt(ingestor: StreamIngestor, url: str, topic: str, client_id: str | None = None,
             stop: threading.Event | None = None, idle_exit: float | None = None,
             on_receipt: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Subscribe to ``topic`` at ``url`` (mqtt://host:port) until ``stop`` is set or ``idle_exit`` seconds pass quietly.

    Messages are acknowledged only after the spool holds them (paho's
    manual acknowledgement), so a reading the lab never stored is redelivered.
    """
    import paho.mqtt.client as mqtt

    u = urlparse(url)
    if u.scheme not in ("mqtt", "tcp", ""):
        raise ValueError(f"{url}: only mqtt://host:port is supported")
    cid = client_id or f"datalab-{ingestor.c.tenant}-{ingestor.c.product}"[:64]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False, manual_ack=True)
    stop = stop or threading.Event()
    last = [time.time()]
    connected = threading.Event()
    error: list[str] = []

    def on_connect(c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            error.append(f"{url}: the broker refused the connection ({rc})")
            stop.set()
            return
        c.subscribe(topic, qos=1)
        connected.set()

    def on_message(c: Any, _u: Any, msg: Any) -> None:
        ingestor.offer(msg.payload)
        c.ack(msg.mid, msg.qos)
        last[0] = time.time()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
    except OSError as e:
        ingestor.spool.close()
        raise ConnectionError(f"{url}: the MQTT broker does not answer ({e})") from e
    client.loop_start()
    try:
        for r in ingestor.deliver():  # batches sealed before a restart
            on_receipt and on_receipt(r)
        while not stop.is_set():
            time.sleep(0.05)
            for r in ingestor.deliver():
                on_receipt and on_receipt(r)
            if idle_exit is not None and connected.is_set() and time.time() - last[0] > idle_exit:
                break
        for r in ingestor.deliver(final=True):
            on_receipt and on_receipt(r)
    finally:
        client.loop_stop()
        client.disconnect()
        ingestor.spool.close()
    if error:
        raise ConnectionError(error[0])
