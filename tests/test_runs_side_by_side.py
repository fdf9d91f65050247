"""Runs of different contracts side by side (issue 21), and the local profile's Dagster event log.

The scheduler (``pipelines.runner.side_by_side``) is driven with real
futures of a thread pool, recording when each run starts and ends: a
contract's runs never overlap and keep their order, at most one heavy run
is in flight, and a run that raises stops new runs but lets the running
ones settle. Then the real thing: deliveries of two contracts through
Dagster in the local worker processes, with the same verdicts and Dagster
records as in this process, a worker killed between two calls, and the
event log that keeps its connections open read back by Dagster's own
SQLite storage.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from datalab.errors import DatalabError
from datalab.intake import landing
from datalab.runs import DeliveryRun
from datalab.store import state
from datalab.timeseries import sample
from tests.conftest import PRESS, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


@dataclass(frozen=True)
class _C:
    id: str


def _drive(runs: list[tuple[_C, list[str]]], width: int, heavy: set[str] = frozenset(), fail: str | None = None,
           seconds: float = 0.05, slow: frozenset[str] = frozenset()
           ) -> tuple[list[tuple[str, str, float, float]], list[str], BaseException | None]:
    """side_by_side over a thread pool: (contract, first delivery, start, end) per run, settled deliveries, error."""
    from pipelines.runner import side_by_side

    log: list[tuple[str, str, float, float]] = []
    lock = threading.Lock()
    settled: list[str] = []

    def work(c: _C, batch: list[str]) -> list[DeliveryRun]:
        t0 = time.monotonic()
        time.sleep(seconds * (6 if batch[0] in slow else 1))
        with lock:
            log.append((c.id, batch[0], t0, time.monotonic()))
        if batch[0] == fail:
            raise RuntimeError(f"{fail} broke (test)")
        return [DeliveryRun(c.id, d, True, True, "validated") for d in batch]

    error = None
    with ThreadPoolExecutor(max_workers=8) as pool:
        try:
            side_by_side(runs, width, lambda b: b[0] in heavy, lambda c, b: pool.submit(work, c, b),
                         lambda rs: settled.extend(r.delivery_id for r in rs))
        except BaseException as e:  # the test looks at it
            error = e
    return log, settled, error


def _overlap(a: tuple[str, str, float, float], b: tuple[str, str, float, float]) -> bool:
    return a[2] < b[3] and b[2] < a[3]


def test_a_contracts_runs_never_overlap_and_keep_their_order() -> None:
    a, b, c = _C("a"), _C("b"), _C("c")
    runs = [(a, ["a1"]), (b, ["b1"]), (c, ["c1"]), (a, ["a2"]), (b, ["b2"]), (a, ["a3"])]
    log, settled, error = _drive(runs, width=3, seconds=0.2)  # long enough that a1 and b1 surely overlap
    assert error is None and sorted(settled) == sorted(d for _c, b_ in runs for d in b_)
    for x in log:
        for y in log:
            if x is not y and x[0] == y[0]:
                assert not _overlap(x, y), (x, y)
    starts = {run[1]: run[2] for run in log}
    assert starts["a1"] < starts["a2"] < starts["a3"] and starts["b1"] < starts["b2"]
    # different contracts did run side by side (three lanes, three contracts at first)
    assert _overlap(*[x for x in log if x[1] in ("a1", "b1")])


def test_at_most_width_runs_and_one_heavy_run_at_once() -> None:
    runs = [(_C(f"k{i}"), [f"d{i}"]) for i in range(6)]
    log, settled, error = _drive(runs, width=2, heavy={"d0", "d1", "d2"})
    assert error is None and len(settled) == 6
    for x in log:
        assert sum(1 for y in log if y[2] <= x[2] < y[3]) <= 2  # running when x started: itself and one other
        if x[1] in ("d0", "d1", "d2"):
            assert not any(_overlap(x, y) for y in log if y is not x and y[1] in ("d0", "d1", "d2"))


def test_a_run_that_raises_stops_new_runs_and_lets_running_ones_settle() -> None:
    a, b = _C("a"), _C("b")
    runs = [(a, ["a1"]), (b, ["b1"]), (a, ["a2"]), (b, ["b2"])]
    # b1 outlasts a1, so the error comes while b1 runs: b1 settles, neither a2 nor b2 starts
    log, settled, error = _drive(runs, width=2, fail="a1", seconds=0.05, slow=frozenset({"b1"}))
    assert isinstance(error, RuntimeError) and "a1 broke" in str(error)
    assert "b1" in settled  # running beside the failing run: waited for and settled
    assert not {"a2", "b2"} & {x[1] for x in log}  # nothing started after the error


# --- the real runs ---------------------------------------------------------------------------------------------


def _push(contracts, tmp: Path, cid: str, n: int, first_seed: int = 0) -> list[str]:
    c = contracts[cid]
    out = []
    for i in range(first_seed, first_seed + n):
        p = sample.write(sample.generate(c, 300, seed=i, start=START + dt.timedelta(days=i)), tmp / f"{c.product}-{i}.csv")
        out.append(landing.push(c, [p], actor=f"firm:{c.tenant}").delivery_id)
    return out


def test_two_contracts_run_side_by_side_in_worker_processes(lab: Path, tmp_path: Path, contracts,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from pipelines import runner

    monkeypatch.setenv("DATALAB_LOCAL_RUNS", "2")
    monkeypatch.setenv("DATALAB_RUN_BATCH", "2")
    spindle, press = _push(contracts, tmp_path, SPINDLE, 3), _push(contracts, tmp_path, PRESS, 2)
    seen: list[DeliveryRun] = []
    out = runner.run_pending(on_event=seen.append)
    assert 2 in runner._WORKERS.pools  # the worker processes ran them
    assert [r.delivery_id for r in out] == [r.delivery_id for r in seen]
    assert sorted(r.delivery_id for r in out) == sorted(spindle + press)
    assert all(r.validation_ok and r.message == "validated" for r in out)
    assert all(state.get(d)["stage"] == "validated" for d in spindle + press)
    # this lab's Dagster instance holds the workers' runs: spindle in two (2 + 1), press in one
    inst = runner.instance()
    assert len(inst.get_runs()) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in inst.get_runs())
    key = dg.AssetKey(["bavaria_spindle", "spindle_telemetry", "curated"])
    assert {m.partition_key for m in inst.fetch_materializations(key, limit=10).records} == set(spindle)
    assert runner.run_pending() == []


def test_a_killed_worker_leaves_its_deliveries_pending_and_the_next_call_runs_them(
        lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import runner

    monkeypatch.setenv("DATALAB_LOCAL_RUNS", "2")
    runner.start_local_workers(2)
    for pid in list(runner._WORKERS.pools[2]._processes):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    ds = _push(contracts, tmp_path, SPINDLE, 1) + _push(contracts, tmp_path, PRESS, 1)
    with pytest.raises(DatalabError, match=r"worker process running deliveries died.*2 deliveries of .* stay pending") as e:
        runner.run_pending()
    assert all(x in str(e.value) for x in (*ds, SPINDLE, PRESS))  # what stays pending, by name
    assert 2 not in runner._WORKERS.pools
    assert set(ds) <= set(state.pending(contracts[SPINDLE].id)) | set(state.pending(contracts[PRESS].id))
    out = runner.run_pending()
    assert sorted(r.delivery_id for r in out) == sorted(ds) and all(r.validation_ok for r in out)


def test_the_event_log_keeps_connections_open_and_dagster_reads_it_as_its_own(
        lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from pipelines import dagster_storage, runner

    inst = runner.instance()
    storage = inst.event_log_storage
    assert isinstance(storage, dagster_storage.PooledSqliteEventLogStorage)
    # more runs than the files it keeps open (a run per delivery, all on this instance):
    # the oldest are closed, every run's events stay
    monkeypatch.setenv("DATALAB_RUN_BATCH", "1")
    monkeypatch.setattr(runner, "_cluster_instance", lambda s: inst)
    monkeypatch.setattr(inst, "dispose", lambda: None)  # run_pending disposes its instance; this one is looked at after
    ds = _push(contracts, tmp_path, SPINDLE, dagster_storage.KEEP_RUN_FILES + 2)
    assert [r.delivery_id for r in runner.run_pending(SPINDLE) if r.validation_ok] == ds
    assert len([k for k in storage._engines if k != "index"]) <= dagster_storage.KEEP_RUN_FILES
    stock = SqliteEventLogStorage(str(inst.root_directory) + "/history/runs")
    runs = inst.get_runs()
    assert len(runs) == len(ds)
    for run in runs:
        ours = [e.dagster_event_type for e in storage.get_logs_for_run(run.run_id) if e.is_dagster_event]
        theirs = [e.dagster_event_type for e in stock.get_logs_for_run(run.run_id) if e.is_dagster_event]
        assert ours == theirs and dg.DagsterEventType.ASSET_MATERIALIZATION in theirs
    key = dg.AssetKey(["bavaria_spindle", "spindle_telemetry", "curated"])
    assert {m.partition_key for m in stock.fetch_materializations(key, limit=20).records} == set(ds)
    # the asset key's row (updated, not inserted, after its first event) says what Dagster's would
    last = stock.get_latest_materialization_events([key])[key]
    assert last is not None and last.run_id == runs[0].run_id  # get_runs lists the newest first
    assert last.dagster_event.partition == ds[-1]
    assert stock.get_asset_records([key])[0].asset_entry.last_materialization_record.storage_id == \
        stock.fetch_materializations(key, limit=1).records[0].storage_id
    with storage.index_connection() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # every file it created has Dagster's tables at Dagster's head revision, as Dagster's own _initdb leaves them
    from dagster._core.storage.event_log.sqlite import sqlite_event_log as dagster_sqlite
    from dagster._core.storage.sql import check_alembic_revision, get_alembic_config

    for shard in ["index", runs[0].run_id, runs[-1].run_id]:
        with (stock.run_connection(shard) if shard != "index" else stock.index_connection()) as conn:
            db_rev, head = check_alembic_revision(get_alembic_config(dagster_sqlite.__file__), conn)
            assert db_rev == head and head is not None
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # a run's file is a copy of one made once per process, and holds what Dagster's own makes
    assert dagster_storage._run_file_template.cache_info().currsize == 1

    def schema(conn) -> list[tuple[str, str, str]]:
        return conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").all()

    with stock.run_connection(runs[0].run_id) as conn:  # (one at a time: Dagster's lock is not reentrant)
        ours = schema(conn)
    with stock.run_connection("made-by-dagster") as conn:
        theirs = schema(conn)
    assert ours == theirs and len(ours) > 10
    storage.dispose()
    assert not storage._engines


def test_idle_workers_are_stopped_and_started_again_when_needed(lab: Path, tmp_path: Path, contracts,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import runner

    monkeypatch.setattr(runner, "WORKERS_IDLE_S", 0.5)
    runner.start_local_workers(2)
    pids = list(runner._WORKERS.pools[2]._processes)
    time.sleep(2.0)
    assert not runner._WORKERS.pools
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    monkeypatch.setenv("DATALAB_LOCAL_RUNS", "2")
    ds = _push(contracts, tmp_path, SPINDLE, 1) + _push(contracts, tmp_path, PRESS, 1)
    got = runner.run_pending()
    assert sorted(r.delivery_id for r in got if r.validation_ok) == sorted(ds), got  # (the runs' messages, if not)


def _warmth() -> tuple[int, str | None]:
    """In a worker: its process id, and the Dagster home of the instance it holds open (None: none)."""
    from pipelines import runner

    time.sleep(0.05)  # so that the other tasks go to the other workers
    held = runner._LOCAL._settings
    return os.getpid(), None if runner._LOCAL._inst is None or held is None else str(held.dagster_home)


def test_started_workers_are_warm_with_this_labs_instance_open(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start_local_workers returns once every worker has its definitions built and this lab's instance open.

    A worker's first run used to open the instance (0.9 s of CPU, the
    storages imported and their schemas checked): inside the time of the
    first deliveries after a start.
    """
    from datalab.config import settings
    from pipelines import runner

    runner.stop_local_workers()
    runner.start_local_workers(2)
    pool = runner._WORKERS.pools[2]
    seen: dict[int, str | None] = {}
    for _ in range(20):
        seen.update(f.result() for f in [pool.submit(_warmth) for _ in range(4)])
        if len(seen) == 2:
            break
    assert set(seen) == set(pool._processes)
    assert set(seen.values()) == {str(settings().dagster_home)}
    runner.stop_local_workers()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie not yet reaped counts as gone
        return f.read().split(") ")[-1][0] != "Z"


def test_a_process_keeps_its_instance_and_definitions_until_something_they_come_from_changes(
        lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_pending`` reuses the instance and the definitions of its last call; new settings, or a changed
    file under the contracts folder, give new ones (and the old instance is closed)."""
    from datalab.config import settings
    from pipelines import runner

    monkeypatch.setenv("DATALAB_LOCAL_RUNS", "1")
    opened: list = []
    real = runner._cluster_instance

    def counting(s):
        opened.append(real(s))
        return opened[-1]

    monkeypatch.setattr(runner, "_cluster_instance", counting)
    runner._LOCAL.close()
    first = _push(contracts, tmp_path / "a", SPINDLE, 1)
    assert [r.delivery_id for r in runner.run_pending()] == first
    defs = runner._defs()
    second = _push(contracts, tmp_path / "b", SPINDLE, 1, first_seed=50)
    assert [r.delivery_id for r in runner.run_pending()] == second
    assert len(opened) == 1 and runner._defs() is defs
    # a contract file touched: the definitions are built again, the instance stays
    path = settings().contracts_dir / next(p.name for p in settings().contracts_dir.glob("*.yaml"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert runner._defs() is not defs
    # other settings: another instance, and the one before is closed
    monkeypatch.setenv("DATALAB_RUN_BATCH", "7")
    assert runner.run_pending() == []
    assert len(opened) == 2
    assert not opened[0].event_log_storage._engines  # disposed
    runner._LOCAL.close()


def test_two_threads_running_pending_deliveries_run_each_once(lab: Path, tmp_path: Path, contracts,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The service answers ``POST /run`` on a pool of threads: two calls at once take turns, so no delivery
    is run twice and a contract's runs never overlap."""
    from pipelines import runner

    monkeypatch.setenv("DATALAB_LOCAL_RUNS", "1")
    monkeypatch.setenv("DATALAB_RUN_BATCH", "1")
    ds = _push(contracts, tmp_path, SPINDLE, 4)
    with ThreadPoolExecutor(2) as pool:
        got = [f.result() for f in [pool.submit(runner.run_pending) for _ in range(2)]]
    ran = [r.delivery_id for runs in got for r in runs]
    assert sorted(ran) == sorted(ds) and all(r.validation_ok for runs in got for r in runs)
    inst = runner.instance()
    try:
        import dagster as dg

        per = [len(inst.get_runs(filters=dg.RunsFilter(tags={"datalab/delivery": d}))) for d in ds]
    finally:
        inst.dispose()
    assert per == [1] * len(ds)
    runner._LOCAL.close()
