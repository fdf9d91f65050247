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


def test_iceberg_commit_beaten_by_another_writer_is_retried(lab: Path) -> None:
    """A publish's rewrite that another writer's commit beat is applied again to the table as it is then.

    pyiceberg refuses a transaction that deletes every row and adds the
    version's files when rows were added since it was loaded; publish's
    ``commit_retrying`` reloads the table and applies the rewrite again.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.expressions import AlwaysTrue

    from datalab.config import settings
    from datalab.errors import DatalabError
    from datalab.store import publish

    s = settings()
    ice = publish.iceberg_catalog(s)
    ident = f"{publish.NAMESPACE}.race_t"

    def rows(*xs: int) -> pa.Table:
        return pa.table({"x": pa.array(xs, pa.int64())})

    tbl = ice.create_table(ident, schema=rows(0).schema)
    tbl.append(rows(0))
    data = Path(tbl.location().removeprefix("file://")) / "data"
    data.mkdir(parents=True, exist_ok=True)
    mine_file = data / "version.parquet"
    pq.write_table(rows(3, 4), mine_file)
    calls: list[int] = []

    def rewrite(t) -> None:  # the shape of publish's register(): every row replaced by the version's files
        calls.append(1)
        if len(calls) == 1:  # a real second writer (its own catalog connection) commits first
            publish.iceberg_catalog(s).load_table(ident).append(rows(1, 2))
        with t.transaction() as tx:
            tx.delete(AlwaysTrue())
            tx.add_files([mine_file.as_uri()])

    tbl = publish.commit_retrying(ice, ident, "registering the data files", rewrite)
    assert len(calls) == 2  # refused once, then applied to the table as it was then
    assert sorted(tbl.scan().to_arrow()["x"].to_pylist()) == [3, 4]  # the version's rows, nothing else

    def always_beaten(t) -> None:
        calls.append(1)
        publish.iceberg_catalog(s).load_table(ident).append(rows(9))
        with t.transaction() as tx:
            tx.delete(AlwaysTrue())
            tx.add_files([mine_file.as_uri()])

    with pytest.raises(DatalabError, match=r"race_t: registering lost to a concurrent commit 5 times"):
        publish.commit_retrying(ice, ident, "registering", always_beaten)
