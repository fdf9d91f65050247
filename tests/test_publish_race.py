"""Two publishes of the same dataset racing: one version per publish, no half-written claim."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from datalab.intake import landing
from datalab.timeseries import sample
from tests.conftest import PRESS, PUMPS, SPINDLE, fresh_pg_database

pytestmark = pytest.mark.slow


def _publish_in_child(env: dict[str, str], barrier, out) -> None:
    os.environ.update(env)
    from datalab.store import publish

    barrier.wait()
    try:
        r = publish.publish("plant-telemetry", actor="race")
        out.put((r.version, r.created))
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put(("error", repr(e)))


def _race(tmp_path: Path, contracts) -> list[tuple]:
    from pipelines import runner

    for i, cid in enumerate((SPINDLE, PRESS, PUMPS)):
        c = contracts[cid]
        p = sample.write(sample.generate(c, 600, seed=i, start=dt.datetime(2026, 1, 5, tzinfo=dt.UTC)), tmp_path / f"{i}.csv")
        assert landing.push(c, [p], actor="firm:test").accepted
    assert all(r.validation_ok for r in runner.run_pending())
    env = {k: v for k, v in os.environ.items() if k.startswith("DATALAB_")}
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_publish_in_child, args=(env, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    return sorted(out.get(timeout=5) for _ in procs)


def _check(results: list[tuple]) -> None:
    from datalab.store import publish

    assert results == [("1.0.0", False), ("1.0.0", True)], results
    assert [v["version"] for v in publish.list_versions("plant-telemetry")] == ["1.0.0"]


def test_two_publishes_race_on_sqlite(lab: Path, tmp_path: Path, contracts) -> None:
    _check(_race(tmp_path, contracts))


def test_two_publishes_race_on_postgresql(lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_pg_database("dl_race") as url:
        monkeypatch.setenv("DATALAB_CATALOG_URL", url)
        _check(_race(tmp_path, contracts))
