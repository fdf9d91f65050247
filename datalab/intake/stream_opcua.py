"""OPC UA as a second stream transport: a PLC's variables, landed with the MQTT stream's delivery semantics.

``datalab stream CONTRACT --opcua opc.tcp://HOST:PORT/PATH --node NODEID=ENTITY/SENSOR[/UNIT] ...``
subscribes to data changes of each node; every change is one reading
(entity, the value's source timestamp, sensor, value, unit) offered to the
same ``stream.StreamIngestor``: spooled, deduplicated, delivered every N
rows or T seconds with a receipt. The delivery key is the node id and the
source timestamp, so the same value seen twice lands once.

OPC UA keeps no session for a client that is gone, so on every start the
lab subscribes, then reads each node's history (HistoryRead, raw) from the
last reading it spooled for that node (subscribed first, so a change made
in between is in one or the other; the spool keeps each key once): values that changed while the lab was down, or that
arrived but were not yet spooled when it died, are recovered, at least once.
That needs the server to historize the nodes; one that does not loses the
changes made while the lab is down (the start says so per node).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datalab.intake.stream import StreamIngestor

log = logging.getLogger(__name__)
TS = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width: keys of one node sort by time


@dataclass(frozen=True)
class NodeMap:
    node: str  # e.g. ns=2;i=7
    entity: str
    sensor: str
    unit: str | None = None

    @classmethod
    def parse(cls, text: str) -> NodeMap:
        """``NODEID=ENTITY/SENSOR[/UNIT]`` (the node id may hold '=': the last one splits; the unit may hold '/')."""
        node, _, rest = text.rpartition("=")
        parts = rest.split("/", 2)
        if not node or len(parts) not in (2, 3) or not all(parts[:2]):
            raise ValueError(f"--node {text!r}: expected NODEID=ENTITY/SENSOR[/UNIT], e.g. 'ns=2;i=7=BSW-M01/spindle_temp/Cel'")
        return cls(node, parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _reading(ing: StreamIngestor, m: NodeMap, value: Any, ts: dt.datetime) -> bytes:
    lay, c = ing.c.layout, ing.c
    ts = (ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    obj: dict[str, Any] = {ing.key: f"{m.node}@{ts.strftime(TS)}", c.entity.source_name: m.entity,
                           c.time.source_name: ts.strftime(TS), lay.sensor_column: m.sensor, lay.value_column: value}
    if lay.unit_column and m.unit:
        obj[lay.unit_column] = m.unit
    return json.dumps(obj).encode()


def _cursor(ing: StreamIngestor, m: NodeMap) -> dt.datetime | None:
    """The source time of the last reading of ``m`` the spool holds."""
    with ing.spool._lock:
        row = ing.spool._db.execute("SELECT max(key) FROM readings WHERE key >= ? AND key < ?",
                                    (f"{m.node}@", f"{m.node}@~")).fetchone()
    if not row or not row[0]:
        return None
    return dt.datetime.strptime(row[0].rsplit("@", 1)[1], TS).replace(tzinfo=dt.UTC)


async def _run(ing: StreamIngestor, url: str, nodes: list[NodeMap], stop: threading.Event,
               idle_exit: float | None, on_receipt: Callable[[dict[str, Any]], None] | None) -> None:
    from asyncua import Client, ua

    last = [time.time()]

    class Handler:
        def __init__(self, by_id: dict[str, NodeMap]):
            self.by_id = by_id

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            m = self.by_id[node.nodeid.to_string()]
            dv = data.monitored_item.Value
            ing.offer(_reading(ing, m, val, dv.SourceTimestamp or dv.ServerTimestamp or dt.datetime.now(dt.UTC)))
            last[0] = time.time()

    async with Client(url) as client:
        handles = {m.node: client.get_node(m.node) for m in nodes}
        # Where each node's history starts, taken before the subscription's first values move it.
        since = {m.node: _cursor(ing, m) for m in nodes}
        by_id = {handles[m.node].nodeid.to_string(): m for m in nodes}
        sub = await client.create_subscription(50, Handler(by_id))
        # Every sample, not only changed values: a PLC writing the same value again at a new source
        # time is a reading too (the default trigger, StatusValue, drops it). Sampling interval 0: the
        # server's fastest. asyncua's public subscribe_data_change takes no filter, so _subscribe.
        every = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
        await sub._subscribe(list(handles.values()), mfilter=every, queuesize=10_000, sampling_interval=0.0)
        # Subscribed first, history after: a change made between the two is in one or the other
        # (the spool keeps a key once), never in neither.
        for m in nodes:
            if since[m.node] is None:
                continue
            try:  # what changed while the lab was away
                # end a day ahead: a PLC clock running ahead of the lab's must not hide its latest values
                hist = await handles[m.node].read_raw_history(
                    starttime=since[m.node], endtime=dt.datetime.now(dt.UTC) + dt.timedelta(days=1), numvalues=0)
            except Exception as e:
                log.warning("%s: no history for %s since %s (%s): changes while the lab was down are lost",
                            url, m.node, since[m.node], e)
                continue
            for dv in hist:
                ing.offer(_reading(ing, m, dv.Value.Value, dv.SourceTimestamp or dv.ServerTimestamp))
        last[0] = time.time()
        while True:
            pushed = ing.deliver()
            for r in pushed:
                on_receipt and on_receipt(r)
            if pushed:  # quiet time counts from the end of the lab's own pushing, not only the last message
                last[0] = max(last[0], time.time())
            if stop.is_set() or (idle_exit is not None and time.time() - last[0] > idle_exit):
                break
            await asyncio.sleep(0.05)
    for r in ing.deliver(final=True):
        on_receipt and on_receipt(r)


def run_opcua(ingestor: StreamIngestor, url: str, nodes: list[NodeMap], stop: threading.Event | None = None,
              idle_exit: float | None = None, on_receipt: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Subscribe to ``nodes`` at ``url`` (opc.tcp://...) until ``stop`` is set or ``idle_exit`` quiet seconds."""
    if not url.startswith("opc.tcp://"):
        raise ValueError(f"{url}: an OPC UA endpoint is opc.tcp://host:port/path")
    unknown = sorted({m.sensor for m in nodes} - ingestor.sensors)
    if unknown:
        raise ValueError(f"--node: sensor(s) {unknown} are not measurements of contract {ingestor.c.id}")
    try:
        asyncio.run(_run(ingestor, url, nodes, stop or threading.Event(), idle_exit, on_receipt))
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"{url}: the OPC UA server does not answer ({e})") from e
    finally:
        ingestor.spool.close()
