"""The end-to-end demo on the embedded default (no servers, no GPU, no network).

Three firms push two batches of sample deliveries (one deliberately broken
delivery is rejected with its reasons), the real C-MAPSS and hydraulic files
are pushed too, everything runs through the Dagster definitions in-process,
``plant-telemetry`` is published as 1.0.0 and then 1.0.1, and an ML team
pulls both, once for an allowed purpose and once for a refused one.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from datalab.cli.ui import command_hint
from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts.contract import Contracts
from datalab.errors import PolicyRefused
from datalab.intake import landing
from datalab.intake.receipts import Receipt
from datalab.kinds import faces as kind_faces
from datalab.kinds import kind_of
from datalab.runs import DeliveryRun, Runner
from datalab.store import pull

FIRMS = [
    "urn:datalab:bavaria-spindle:spindle-telemetry",
    "urn:datalab:lyon-presses:press-line",
    "urn:datalab:oulu-pumps:pump-telemetry",
]
REAL = Path(__file__).resolve().parents[3] / "shared" / "realdata"


def _real_dir(s: Settings | None = None) -> Path | None:
    for p in ((s or settings()).realdata, REAL, Path("../shared/realdata")):
        if p and Path(p).is_dir():
            return Path(p)
    return None


BATCH1_START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
BATCH2_START = BATCH1_START + dt.timedelta(hours=6)  # later readings; some rows of the batch are late


def run_demo(out: Console, rows: int, real: bool, pipelines: Any) -> None:
    """The demo, step by step: each step is a function that prints what it did and returns what later steps need.

    ``pipelines`` runs the Dagster definitions in-process (``run_pending``,
    ``publish``); the summary counts what the steps returned.
    """
    s = settings()
    t0 = time.perf_counter()
    cs = contracts_mod.load_all(s.contracts_dir)
    work = s.home / "demo-inbox"
    work.mkdir(parents=True, exist_ok=True)
    out.rule("1. member firms push batch 1")
    receipts = push_batch1(out, cs, work, rows, real, s)
    out.rule("2. Dagster: ingest, curate, validate (in-process)")
    runs = pipelines.run_pending(on_event=lambda x: out.print(f"  {'✓' if x.validation_ok else '✗'} {x.delivery_id} {x.contract_id.split(':')[-1]}: {x.message}"))
    out.rule("3. publish")
    v1 = publish_first(out, pipelines, real, s)
    out.rule("4. batch 2 (later readings, some late) and a new version")
    receipts2, runs2, v2 = push_batch2(out, cs, work, rows, pipelines)
    receipts += receipts2
    runs += runs2
    out.rule("5. an ML team pulls")
    pulled = ml_team_pulls(out, s, v1, v2)
    out.rule("summary")
    print_summary(out, s, receipts, runs, v1, v2, pulled, t0)
    print_next_commands(out, s, v2)


def push_batch1(out: Console, cs: Contracts, work: Path, rows: int, real: bool, s: Settings) -> list[Receipt]:
    """Each firm's first sample delivery, two broken ones (rejected with their reasons) and, with ``real``, the real files."""
    receipts = []
    for i, cid in enumerate(FIRMS):
        c = cs[cid]
        [p] = kind_of(c).sample(c, work, rows, seed=100 + i, start=BATCH1_START, stem=f"{c.product}-batch1")
        receipts.append(landing.push(c, [p], actor=f"firm:{c.tenant}"))
    receipts += _push_broken(cs, work)
    if real and (rd := _real_dir(s)):
        receipts += _push_real(cs, rd)
    for r in receipts:
        mark = "[green]accepted[/]" if r.accepted else "[red]rejected[/]"
        out.print(f"{mark} {r.delivery_id} {r.contract_id.split(':')[-1]}: {r.rows or 0:,} rows delivered{' (duplicate)' if r.duplicate else ''}")
        for why in r.reasons:
            out.print(f"    reason: {why}", markup=False, highlight=False)
    return receipts


def _push_broken(cs: Contracts, work: Path) -> list[Receipt]:
    """Two deliveries the contract refuses: the wrong delimiter, and typos in a number and a timestamp."""
    bad = work / "spindle-telemetry-broken.csv"
    bad.write_text("machine_id;ts;sensor;value;unit\nBSW-M01;2026-01-05T00:00:00Z;spindle_temp;41.2;Cel\n")
    receipts = [landing.push(cs[FIRMS[0]], [bad], actor="firm:bavaria-spindle")]
    bad2 = work / "spindle-telemetry-typos.csv"
    bad2.write_text("machine_id,ts,sensor,value,unit\nBSW-M01,2026-01-05T00:00:00Z,spindle_temp,41.2,Cel\n"
                    "BSW-M01,2026-01-05T00:00:01Z,spindle_temp,4l.3,Cel\nBSW-M01,yesterday,oil_pressure,5.1,bar\n")
    receipts.append(landing.push(cs[FIRMS[0]], [bad2], actor="firm:bavaria-spindle"))
    return receipts


def _push_real(cs: Contracts, rd: Path) -> list[Receipt]:
    """The real C-MAPSS and hydraulic files, and what each other kind pushes in the demo."""
    receipts = [
        landing.push(cs["urn:datalab:open-benchmarks:cmapss-fd001"], [rd / "cmapss/train_FD001.txt"], actor="firm:open-benchmarks"),
        landing.push(cs["urn:datalab:open-benchmarks:hydraulic-rig"], [rd / "hydraulic/TS1.txt", rd / "hydraulic/VS1.txt"], actor="firm:open-benchmarks"),
    ]
    for face in kind_faces.faces():  # e.g. Presses de Lyon delivers its tooling CAD next to its sensor data
        if face.demo_push is not None:
            receipts += face.demo_push(cs, rd)
    return receipts


def publish_first(out: Console, pipelines: Runner, real: bool, s: Settings) -> dict[str, Any]:
    """plant-telemetry's first version (returned) and, with ``real``, the real data sets and other kinds' products."""
    v1 = pipelines.publish("plant-telemetry")
    out.print(f"plant-telemetry@{v1['version']}: {v1['why']}, {v1['rows']:,} readings; residency {v1['residency']}; purposes {v1['purposes']}")
    if real and _real_dir(s):
        for name in ("turbofan-cmapss", "hydraulic-rig"):
            m = pipelines.publish(name)
            out.print(f"{name}@{m['version']}: {m['rows']:,} readings")
        for face in kind_faces.faces():
            if face.demo_publish is not None:
                face.demo_publish(out, pipelines, s.home / "pulled", _real_dir(s), s)
    return v1


def push_batch2(out: Console, cs: Contracts, work: Path, rows: int,
                pipelines: Runner) -> tuple[list[Receipt], list[DeliveryRun], dict[str, Any]]:
    """Each firm's second delivery (some readings late), run through the pipelines, and the version it makes."""
    receipts = []
    for i, cid in enumerate(FIRMS):
        c = cs[cid]
        [p] = kind_of(c).sample(c, work, rows, seed=200 + i, start=BATCH2_START, late=25, stem=f"{c.product}-batch2")
        r = landing.push(c, [p], actor=f"firm:{c.tenant}")
        receipts.append(r)
        out.print(f"{'accepted' if r.accepted else 'rejected'} {r.delivery_id} {c.product}: {r.rows:,} rows delivered")
    runs = pipelines.run_pending(on_event=lambda x: out.print(f"  {'✓' if x.validation_ok else '✗'} {x.delivery_id}: {x.message}"))
    v2 = pipelines.publish("plant-telemetry")
    out.print(f"plant-telemetry@{v2['version']}: {v2['why']}, {v2['rows']:,} readings")
    return receipts, runs, v2


def ml_team_pulls(out: Console, s: Settings, v1: dict[str, Any], v2: dict[str, Any]) -> Path:
    """Both versions pulled for an allowed purpose, then one refused for a purpose the policy does not allow."""
    pulled = s.home / "pulled"
    for v in (v1["version"], v2["version"]):
        res = pull.pull(f"plant-telemetry@{v}", "predictive-maintenance", pulled, actor="team:ml-maintenance")
        out.print(f"[green]pulled[/] plant-telemetry@{v} for predictive-maintenance: {res.rows:,} readings -> {res.directory}")
    try:
        pull.pull(f"plant-telemetry@{v2['version']}", "model-training", pulled, actor="team:ml-foundation")
    except PolicyRefused as e:
        out.print(f"[yellow]refused[/] plant-telemetry@{v2['version']} for model-training: {e}", highlight=False)
    return pulled


def print_summary(out: Console, s: Settings, receipts: list[Receipt], runs: list[DeliveryRun], v1: dict[str, Any],
                  v2: dict[str, Any], pulled: Path, t0: float) -> None:
    """The table of what the demo did and where to look (``t0``: when it started)."""
    t = Table("", "value")
    t.columns[1].overflow = "fold"  # paths and commands are copied from here: folded, never cut with "…"
    t.add_row("deliveries accepted / rejected", f"{sum(r.accepted for r in receipts)} / {sum(not r.accepted for r in receipts)}")
    t.add_row("deliveries validated / failed", f"{sum(bool(r.validation_ok) for r in runs)} / {sum(not r.validation_ok for r in runs)}")
    t.add_row("plant-telemetry versions", f"{v1['version']} ({v1['rows']:,} readings), {v2['version']} ({v2['rows']:,} readings)")
    t.add_row("lab home", str(s.home))
    t.add_row("pulled to", str(pulled))
    t.add_row("Data Docs", str(s.data_docs / "index.html"))
    t.add_row("audit log", f"{command_hint()} audit show / {command_hint()} audit verify")
    t.add_row("Dagster UI", f"DATALAB_HOME={s.home} {command_hint()} ui  (then http://127.0.0.1:3000)")
    t.add_row("seconds", f"{time.perf_counter() - t0:.1f}")
    out.print(t)


def print_next_commands(out: Console, s: Settings, v2: dict[str, Any]) -> None:
    """The next commands, whole and unwrapped, to copy into a shell (they work with .venv/bin off PATH)."""
    dl = command_hint()
    out.print("next:", highlight=False)
    for line in (f"export DATALAB_HOME={s.home}", f"{dl} ui            # Dagster UI on http://127.0.0.1:3000",
                 f"{dl} list", f"{dl} show plant-telemetry@{v2['version']}", f"{dl} audit verify"):
        out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
