"""A contract with a long history: what one more small delivery's curation pays for the earlier ones (issue 21).

    .venv/bin/python benchmarks/history.py --history 1000 --history 10000 --history 40000

A firm that streams a delivery a minute has 43,000 of them in a month. Each
curation looks for the earlier deliveries whose readings it may repeat
(``curate.earlier_curated``). This sets up a lab in a temporary folder,
pushes and curates one real 10,000-row spindle delivery, then gives the
contract ``--history`` earlier curated deliveries in the catalog (rows
copied from the real one, each on a day of its own before it, all pointing
at its curated file), pushes one more real delivery and times, side by side
in one run:

* the lookup as the lab does it now (``earlier_curated``: the time ranges
  in ``dl_curated_spans``, an index range on their ends) and as it was
  before that table (``before``, below: every accepted delivery of the
  contract read, with its statistics, twice per curation, and each one's
  statistics parsed to compare time ranges);
* the new delivery's whole curation (``curate_delivery``), which includes
  the lookup.

Prints the medians of ``--repeat`` runs and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"


def median_s(fn: Callable[[], Any], repeat: int) -> float:
    xs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def fake_history(c: Any, real: str, n: int) -> None:
    """``n`` curated deliveries before ``real`` (a copy of its rows, each a day earlier than the one after it)."""
    import sqlalchemy as sa

    from datalab.config import settings
    from datalab.store import catalog as cat
    from datalab.timeseries.curate import _as_time_int

    s = settings()
    d, p, sp = cat.deliveries, cat.processing, cat.curated_spans
    with cat.Catalog(s.catalog_url).begin() as conn:
        drow = dict(conn.execute(sa.select(d).where(d.c.id == real)).one()._mapping)
        prow = dict(conn.execute(sa.select(p).where(p.c.delivery_id == real)).one()._mapping)
        stats = json.loads(prow["stats"])
        deliveries, processing, spans = [], [], []
        for i in range(n):
            day = START - dt.timedelta(days=n - i)
            did = f"d-{day:%Y%m%d}000000-{i:08x}"
            cur = {**stats["curated"], "time_min": day.isoformat(), "time_max": (day + dt.timedelta(hours=1)).isoformat()}
            deliveries.append({**drow, "id": did, "idem_key": f"history-{i}", "received_at": day.isoformat()})
            processing.append({**prow, "delivery_id": did, "stage": "validated", "validation_ok": True,
                               "stats": json.dumps({**stats, "curated": cur})})
            spans.append({"delivery_id": did, "contract_id": c.id, "time_lo": _as_time_int(cur["time_min"]),
                          "time_hi": _as_time_int(cur["time_max"]), "correction": False})
        for table, rows in ((d, deliveries), (p, processing), (sp, spans)):
            for k in range(0, len(rows), 5000):
                conn.execute(table.insert(), rows[k:k + 5000])


def before(c: Any, delivery_id: str, s: Any, span: tuple[int, int]) -> list[str]:
    """The lookup before dl_curated_spans (5051324): exclude_repeats' and earlier_curated's reads."""
    from datalab.store import state
    from datalab.timeseries.curate import _as_time_int

    assert any(r["id"] != delivery_id for r in state.accepted(c.id, s))  # exclude_repeats' first check
    lo, hi = span
    rows = state.accepted(c.id, s)
    me = next(r for r in rows if r["id"] == delivery_id)
    out = []
    for r in rows:
        if r["id"] == delivery_id:
            continue
        later = (r["received_at"], r["id"]) > (me["received_at"], me["id"])
        if r["curated_path"] and r["stage"] in ("curated", "validated") and r["validation_ok"] is not False:
            cur = (json.loads(r["stats"] or "{}") if isinstance(r["stats"], str) else (r["stats"] or {})).get("curated") or {}
            if later and (cur.get("correction") or not cur):
                continue
            t0, t1 = _as_time_int(cur.get("time_min")), _as_time_int(cur.get("time_max"))
            if None not in (lo, hi, t0, t1) and (t1 < lo or t0 > hi):
                continue
            out.append(r["id"])
    return out


def one(n: int, repeat: int, base: Path) -> dict[str, Any]:
    from tests.service_harness import use_lab

    home = base / f"lab-{n}"
    with use_lab(home, ROOT / "data_contracts"):
        from datalab.config import settings
        from datalab.contracts import contract as contracts_mod
        from datalab.intake import landing
        from datalab.timeseries import curate, ingest, sample

        c = contracts_mod.load_all(ROOT / "data_contracts")[SPINDLE]
        first = sample.write(sample.generate(c, 10_000, seed=1, start=START, defects=sample.Defects.none()),
                             base / f"first-{n}.csv")
        real = landing.push(c, [first]).delivery_id
        ingest.ingest_raw(c, real)
        curate.curate_delivery(c, real)
        t = time.perf_counter()
        fake_history(c, real, n)
        setup_s = time.perf_counter() - t
        nxt = sample.write(sample.generate(c, 10_000, seed=2, start=START + dt.timedelta(hours=2),
                                           defects=sample.Defects.none()), base / f"next-{n}.csv")
        new = landing.push(c, [nxt]).delivery_id
        ingest.ingest_raw(c, new)
        s = settings()
        lo = curate._as_time_int(START.isoformat())
        span = (lo, lo + 4 * 3600 * 1_000_000)
        found = [d for d, _ in curate.earlier_curated(c, new, s, span)]
        assert found == before(c, new, s, span), "the two lookups disagree"
        return {"history": n, "setup_s": round(setup_s, 2), "found": len(found),
                "spans_ms": round(1000 * median_s(lambda: curate.earlier_curated(c, new, s, span), repeat), 2),
                "before_ms": round(1000 * median_s(lambda: before(c, new, s, span), repeat), 2),
                "curation_ms": round(1000 * median_s(lambda: curate.curate_delivery(c, new), repeat), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--history", type=int, action="append", help="earlier deliveries (repeat for several)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("DATALAB_ENGINE", "cpu")
    base = Path(tempfile.mkdtemp(prefix="datalab-history-"))
    try:
        print(f"{'history':>8} {'found':>6} {'lookup, spans':>14} {'lookup before':>14} {'curation':>10}")
        for n in args.history or [1000, 10000]:
            r = one(n, args.repeat, base)
            print(f"{n:>8,} {r['found']:>6} {r['spans_ms']:>11} ms {r['before_ms']:>11} ms {r['curation_ms']:>7} ms",
                  flush=True)
            print(json.dumps(r))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
