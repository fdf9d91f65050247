"""The delivery sensor with thousands of pending deliveries: bounded pages and a cursor."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from datalab.config import settings
from datalab.store import catalog as cat
from tests.conftest import SPINDLE, covered


def _insert(ids: list[str], contract_id: str = SPINDLE) -> None:
    c = cat.Catalog(settings().catalog_url)
    with c.begin() as conn:
        conn.execute(cat.deliveries.insert(), [
            {"id": d, "tenant": "bavaria-spindle", "contract_id": contract_id, "contract_version": "1.0.0",
             "status": "accepted", "reasons": "[]", "bytes": 1, "rows": 1, "idem_key": d,
             "received_at": cat.now_iso(), "pushed_by": "firm:test"} for d in ids])


def test_sensor_pages_thousands_of_deliveries_with_a_cursor(lab: Path, contracts) -> None:
    from pipelines.definitions import MAX_RUNS_PER_TICK, build_definitions

    slug = contracts[SPINDLE].slug
    ids = [f"d-20260105{i // 60:04d}{i % 60:02d}-{i:08x}" for i in range(3000)]
    _insert(ids)
    defs = build_definitions()
    sensor = defs.resolve_sensor_def(f"deliveries__{slug}")
    requested: list[str] = []
    cursor = None
    slowest = 0.0
    with dg.DagsterInstance.ephemeral() as inst:
        for tick in range(200):
            t = time.perf_counter()
            # the sensor's own function: the daemon adds the partitions it returns, then launches its runs
            res = sensor(dg.build_sensor_context(instance=inst, cursor=cursor, definitions=defs))
            slowest = max(slowest, time.perf_counter() - t)
            for req in res.dynamic_partitions_requests or []:
                inst.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
            assert len(res.run_requests or []) <= MAX_RUNS_PER_TICK
            order = list(inst.get_dynamic_partitions(f"{slug}__deliveries"))
            got = [d for r in res.run_requests or [] for d in covered(r, order)]
            requested += got
            if got:  # the tick kept its place: the next one reads the page after it
                assert res.cursor >= max(got)
            cursor = res.cursor
            if tick == 10:  # a delivery that commits late with an id before the cursor
                _insert(["d-20260104000000-00000000"])
            if not res.run_requests and tick > 10:
                break
        assert len(inst.get_dynamic_partitions(f"{slug}__deliveries")) == 3001
    assert sorted(requested) == sorted([*ids, "d-20260104000000-00000000"])  # each once, the straggler too
    assert len(set(requested)) == len(requested)
    assert slowest < 2.0, f"a tick took {slowest:.2f} s"
