"""Run the lab's Dagster jobs in-process on the lab's own Dagster instance.

``datalab run`` and ``datalab publish`` use this so that scripted and CI runs
go through the same definitions as the UI, and show up there: the instance
lives under ``$DATALAB_HOME/dagster``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from assets.common import RANGE_END, RANGE_START, partitions_for, partitions_read_once
from assets.registry import factory_for
from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts.contract import Contract
from datalab.errors import DatalabError, NotFound
from datalab.runs import BATCH_ROWS, DeliveryRun, plan_batches
from datalab.store import state
from pipelines.cluster import instance as _cluster_instance

# In-process runs log to the console at DEBUG by default; the CLI prints its
# own summary, and the full event log stays in the instance for the UI. A failed
# step is reported by the CLI in one line (``_error``); Dagster's own ERROR
# record of it carries a stack trace, which a user's mistake must not print
# (issue 20), so only CRITICAL reaches the console. The UI keeps every record.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


__all__ = ["DAGSTER", "DagsterRunner", "DeliveryRun", "fair_order", "instance", "publish", "run_pending"]


def instance() -> dg.DagsterInstance:
    """The lab's Dagster instance: SQLite under home (local) or PostgreSQL (cluster)."""
    return _cluster_instance(settings())


def _execute(job_name: str, inst: dg.DagsterInstance, tags: dict[str, str], partition_key: str | None = None,
             defs: dg.Definitions | None = None, s: Settings | None = None) -> Any:
    """Run one job of the lab's definitions and wait for it.

    Local profile: in this process, as before. Cluster profile: the job is
    reconstructed from ``pipelines.definitions`` so that its steps can be sent
    to the Celery workers, which load the same module; the run's config pins
    this process's settings for every step (pipelines.resources).
    """
    from pipelines.resources import run_config

    s = s or settings()
    cfg = run_config(s, QUIET)
    if s.profile != "cluster":
        job = (defs or _defs()).resolve_job_def(job_name)
        with partitions_read_once(inst):
            return job.execute_in_process(partition_key=partition_key, instance=inst, raise_on_error=False,
                                          run_config=cfg, tags=tags)
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from pipelines import definitions
    from pipelines.cluster import ROOT

    # The job (and with it the executor: Celery's broker and queue) is the
    # module's ``defs``, built once when this process first imported the
    # module. A process whose settings changed since would send the steps to
    # the broker and queue of the earlier settings, where no worker may
    # listen, and wait for them forever; cluster runs are therefore driven
    # from processes spawned for them (run_pending, publish), and a stale
    # module is refused here rather than waited on.
    if s != definitions.BUILT_WITH:
        raise DatalabError("the Dagster definitions of this process were built for other settings "
                           "(profile, broker, queue or contracts changed since); cluster runs are driven "
                           "from a fresh process (pipelines.runner.run_pending / publish)")
    repo = ReconstructableRepository.for_module("pipelines.definitions", "defs", working_directory=str(ROOT))
    recon = repo.get_reconstructable_job(job_name)
    if partition_key is not None:
        tags = {**tags, "dagster/partition": partition_key}
    return dg.execute_job(recon, instance=inst, run_config=cfg, tags=tags, raise_on_error=False)


def _defs() -> dg.Definitions:
    """The lab's definitions, built again only when the settings or a file under the contracts folder changed.

    Building them took 15-20 ms a call (every contract's assets, jobs and
    sensors, the dataset assets), paid by every ``run_pending`` and every run
    in a worker: 5-7 % of a single small delivery's ``run_pending``.
    """
    from pipelines.definitions import build_definitions

    global _BUILT
    s = settings()
    key = (s, _folder_signature(s.contracts_dir))
    built = _BUILT
    if built is not None and built[0] == key:
        return built[1]
    defs = build_definitions()
    _BUILT = (key, defs)  # one assignment: a thread reads the pair before or after it, never half of it
    return defs


_BUILT: tuple[Any, dg.Definitions] | None = None  # (what they were built from, the definitions)


def _folder_signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Every file under ``folder`` with its modification time and size: what the definitions are built from."""
    out = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            try:
                st = p.stat()
            except OSError:  # removed while we looked: the next call sees the folder as it is then
                continue
            out.append((str(p.relative_to(folder)), st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


def _error(result: dg.ExecuteInProcessResult) -> str:
    """The reason a run failed, in one message: a failed asset check names itself and its problems."""
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            ev_data = ev.event_specific_data
            if ev_data is not None and not ev_data.passed:
                md = ev_data.metadata or {}
                problems = md.get("problems")
                text = str(getattr(problems, "value", problems) or "").replace("\n- ", "; ").lstrip("- ")
                return f"asset check {ev_data.check_name} failed on {ev_data.asset_key.to_user_string()}: {text}"
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE" and ev.step_failure_data and ev.step_failure_data.error:
            err = ev.step_failure_data.error
            while err.cause is not None and "DagsterExecutionStepExecutionError" in (err.cls_name or ""):
                err = err.cause
            return err.message.strip()
    return _lost_step(result) or "the run failed"


def _lost_step(result: Any) -> str | None:
    """Why a cluster run could not get a step executed (pipelines/celery_watch.py), or None.

    Not the delivery's fault (no worker consumed the queue, or the step was
    lost again and again): the delivery is left pending for the next run.
    """
    marker = "StepLost: "
    for ev in result.all_events:
        if ev.event_type_value not in ("PIPELINE_FAILURE", "RUN_FAILURE"):
            continue
        err = getattr(ev.event_specific_data, "error", None)
        while err is not None:
            if marker in (err.message or ""):
                return err.message.split(marker, 1)[1].splitlines()[0].strip()
            err = err.cause
    return None


def run_pending(contract_ref: str | None = None, on_event: Callable[[DeliveryRun], None] | None = None,
                parallel: int | None = None) -> list[DeliveryRun]:
    """Materialise every accepted, not yet validated delivery (optionally of one contract).

    A contract's pending deliveries go in runs of up to ``DATALAB_RUN_BATCH``
    (``datalab.runs.plan_batches``: neighbouring partitions, at most
    ``BATCH_ROWS`` rows together), the runs round-robin over firms. One
    contract's runs go one after the other, oldest first: which delivery
    keeps a reading that two deliveries repeat depends on which was curated
    first (``datalab.timeseries.curate.earlier_curated``), so two of its
    runs never curate at once. Runs of different contracts go side by side,
    up to ``parallel`` at once, at most one of them over a large delivery.
    Local profile: ``parallel`` defaults to ``DATALAB_LOCAL_RUNS``; with work
    for one contract, or one lane, the runs go in this process; otherwise in
    warm worker processes kept for the next calls (``_LocalWorkers``).
    Cluster profile: ``parallel`` defaults to ``DATALAB_MAX_RUNS``; each run is
    driven from its own process and its steps execute on the Celery workers.
    """
    s = settings()
    with _run_instance(s) as inst:
        return _run_pending(contract_ref, on_event, parallel, s, inst)


@contextmanager
def _run_instance(s: Settings) -> Iterator[dg.DagsterInstance]:
    """The instance runs go on: local, the process's kept one (``_LocalInstance``), its calls taking turns;
    cluster, a fresh one, disposed after (its open files go now, not at a later collection)."""
    if s.profile != "cluster":
        with _LOCAL.lock:
            yield _LOCAL.instance(s)
        return
    inst = _cluster_instance(s)
    try:
        yield inst
    finally:
        inst.dispose()


def _run_pending(contract_ref: str | None, on_event: Callable[[DeliveryRun], None] | None, parallel: int | None,
                 s: Settings, inst: dg.DagsterInstance) -> list[DeliveryRun]:
    contracts = contracts_mod.load_all(s.contracts_dir)
    chosen = [contracts_mod.find(contracts, contract_ref)] if contract_ref else sorted(contracts.values(), key=lambda c: c.slug)
    defs = _defs() if s.profile != "cluster" else None
    todo: list[tuple[Contract, list[str]]] = []
    rows: dict[str, int | None] = {}
    for c in chosen:
        if factory_for(c) is None:  # a kind without Dagster assets
            continue
        ready, order = _with_partitions(c, state.pending(c.id, s), inst, s)
        if not ready:
            continue
        rows.update(state.rows_of(ready, s))
        todo += [(c, b) for b in plan_batches(ready, order, rows, s.run_batch)]

    out: list[DeliveryRun] = []

    def settled(runs: list[DeliveryRun]) -> None:
        for r in runs:
            out.append(r)
            if on_event:
                on_event(r)

    runs = fair_order(todo)
    width = max(1, parallel or (s.max_concurrent_runs if s.profile == "cluster" else s.local_runs))
    if s.profile != "cluster" and (width == 1 or len({c.id for c, _ in runs}) < 2):
        for c, batch in runs:
            settled(_run_batch(c, batch, inst, defs, s))
        return out
    def heavy(batch: list[str]) -> bool:
        return sum(rows.get(d) or 0 for d in batch) >= BATCH_ROWS

    env, cwd = dict(os.environ), os.getcwd()
    try:
        if s.profile == "cluster":
            # Each run is driven from its own process, as Dagster's run launcher does
            # (Dagster's in-process logging setup is not thread-safe); the steps
            # themselves go to the Celery workers. A fresh pool per call: the runs
            # rebuild the definitions' module under this call's settings.
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=width, mp_context=mp.get_context("spawn")) as pool:
                side_by_side(runs, width, heavy, lambda c, b: pool.submit(_run_in_worker, env, cwd, c.id, b), settled)
        else:
            with _WORKERS.use(width) as pool:
                side_by_side(runs, width, heavy, lambda c, b: pool.submit(_run_in_worker, env, cwd, c.id, b), settled)
    except BrokenProcessPool:
        done = {r.delivery_id for r in out}
        left = [(c.id, d) for c, b in runs for d in b if d not in done]
        raise DatalabError(
            f"a worker process running deliveries died (killed, or out of memory?); {len(left)} deliveries of "
            f"{', '.join(sorted({cid for cid, _ in left}))} stay pending ({', '.join(d for _, d in left[:5])}"
            f"{', ...' if len(left) > 5 else ''}): run again, or with DATALAB_LOCAL_RUNS=1 to run them in this "
            "process") from None
    return out


def side_by_side(runs: list[tuple[Contract, list[str]]], width: int, heavy: Callable[[list[str]], bool],
                 submit: Callable[[Contract, list[str]], Future], settled: Callable[[list[DeliveryRun]], None]) -> None:
    """Drive ``runs`` (in fair order) ``width`` at a time: one run per contract and one heavy run at once.

    The next run started is the first in ``runs`` whose contract has none
    running (and, if it is ``heavy``, while no heavy one runs), so firms keep
    their round-robin turns and a contract's runs keep their order. A heavy
    run is one over a large delivery: two such curations at once would each
    need the memory that one is bounded by. A run that raises stops new
    runs from starting; those running are waited for (their deliveries
    settled) before the error goes on.
    """
    waiting = list(runs)
    running: dict[Future, tuple[str, bool]] = {}
    error: BaseException | None = None
    while running or (waiting and error is None):
        busy = {cid for cid, _h in running.values()}
        heavy_busy = any(h for _cid, h in running.values())
        for item in [] if error else list(waiting):
            c, batch = item
            is_heavy = heavy(batch)
            if len(running) >= width:
                break
            if c.id in busy or (is_heavy and heavy_busy):
                continue
            waiting.remove(item)
            running[submit(c, batch)] = (c.id, is_heavy)
            busy.add(c.id)
            heavy_busy = heavy_busy or is_heavy
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for f in done:
            running.pop(f)
            try:
                settled(f.result())
            except BaseException as e:  # re-raised once the others are done
                error = error or e
    if error is not None:
        raise error


def _with_partitions(c: Contract, pending: list[str], inst: dg.DagsterInstance,
                     s: Settings) -> tuple[list[str], list[str]]:
    """The pending deliveries that have (or now get) a partition, within ``DATALAB_MAX_PARTITIONS``,
    and the contract's partition keys in Dagster's order (which the runs' ranges follow).

    As the delivery sensor does: at the bound, settled deliveries' partitions
    are rolled up first (pipelines.rollup); what still does not fit waits for
    the next run, oldest first, and is said on stderr. The keys are read
    once (up to 50,000 of them, 115 ms at 40,000): Dagster keeps them in the
    order they were added and adds the missing ones in the order given, so
    the order after the add is the one read followed by the ones added. A
    process adding the same contract's partitions at that moment (the
    sensor) can only make a run's range hold fewer of its deliveries than
    planned; those are then run alone (``_run_batch``).
    """
    from pipelines import rollup

    if not pending:  # nothing to look up: a contract's live partitions are up to 50,000 keys to read
        return [], []
    parts_name = partitions_for(c).name
    live = list(inst.get_dynamic_partitions(parts_name))
    have = set(live)
    new = [d for d in pending if d not in have]
    if new and len(live) + len(new) > s.max_partitions:
        rep = rollup.make_room(inst, c, s, live, len(new), actor="datalab:run")
        room = max(0, s.max_partitions - rep.live_after)
        if room < len(new):
            import sys

            print(f"{c.id}: {len(new) - room} pending deliveries wait: {rep.live_after} live partitions of "
                  f"{parts_name}, the bound (DATALAB_MAX_PARTITIONS={s.max_partitions}); they run once "
                  "published or failed deliveries' partitions are rolled up", file=sys.stderr)
            new = new[:room]
        live = list(inst.get_dynamic_partitions(parts_name))  # less the rolled-up ones (rare: at the bound)
    if new:
        inst.add_dynamic_partitions(parts_name, new)
    runnable = have | set(new)
    return [d for d in pending if d in runnable], [*live, *new]


def _run_batch(c: Contract, batch: list[str], inst: dg.DagsterInstance, defs: dg.Definitions | None,
               s: Settings) -> list[DeliveryRun]:
    """One run over a range of neighbouring deliveries; any it did not settle is run alone after.

    The assets record the verdicts only once every delivery of the range is
    curated and validated, so a run that fails half way (a delivery whose
    data breaks a step, a lost worker) leaves its deliveries pending, and
    each then gets its own run: its own error, exactly as without batches.
    """
    if len(batch) == 1:
        return [_run_one(c, batch[0], inst, defs, s)]
    from pipelines.definitions import ingest_job_name

    _execute(ingest_job_name(c), inst, {"datalab/deliveries": str(len(batch)), "datalab/source": "cli",
                                        "tenant": c.tenant, RANGE_START: batch[0], RANGE_END: batch[-1]},
             defs=defs, s=s)
    out = []
    for d in batch:
        st = state.get(d, s) or {}
        if st.get("stage") in ("validated", "failed"):
            msg = _verdict(st) or str((st.get("stats") or {}).get("error") or "failed")
            out.append(DeliveryRun(c.id, d, bool(st.get("validation_ok")), st.get("validation_ok"), msg))
        else:
            out.append(_run_one(c, d, inst, defs, s))
    return out


def _verdict(st: dict[str, Any]) -> str | None:
    """What the suite said of a delivery ("validated", "validation failed"), None before it ran."""
    return {True: "validated", False: "validation failed"}.get(st.get("validation_ok"))


def _run_one(c: Contract, d: str, inst: dg.DagsterInstance, defs: dg.Definitions | None,
             s: Settings) -> DeliveryRun:
    from pipelines.definitions import ingest_job_name

    result = _execute(ingest_job_name(c), inst, {"datalab/delivery": d, "datalab/source": "cli",
                                                 "tenant": c.tenant}, partition_key=d, defs=defs, s=s)
    st = state.get(d, s) or {}
    ok = result.success
    msg = _verdict(st) or _error(result)
    # a step no worker would run leaves the delivery pending (the next run takes it), not failed
    if not ok and st.get("stage") not in ("validated", "failed") and _lost_step(result) is None:
        state.set_stage(d, "failed", s=s, stats={"error": msg})
    return DeliveryRun(c.id, d, ok, st.get("validation_ok"), msg)


class _LocalInstance:
    """The local profile's Dagster instance, kept by a process for its next ``run_pending`` (or run, in a worker).

    Opening it took about 45 ms (dagster.yaml read, the run, schedule and
    event log storages opened, each checking its schema), paid again by
    every call: with one pushed delivery, a seventh of ``run_pending``. It
    is opened again when the settings change (another lab, another home)
    and the one before is closed then, so a process holds the open files of
    one instance at most (pipelines.dagster_storage keeps a few per
    instance). ``lock`` makes a process's ``run_pending`` calls (the
    service's ``POST /run`` requests run on a pool of threads) go one after
    the other: they share the instance, and two at once would also have
    run the same pending deliveries twice, and a contract's runs side by side.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._inst: dg.DagsterInstance | None = None
        self._settings: Settings | None = None

    def instance(self, s: Settings) -> dg.DagsterInstance:
        if self._inst is not None and self._settings == s:
            os.environ["DAGSTER_HOME"] = str(s.dagster_home)  # as opening it sets it (pipelines.cluster.instance)
            return self._inst
        self.close()
        self._inst, self._settings = _cluster_instance(s), s
        return self._inst

    def close(self) -> None:
        if self._inst is not None:
            self._inst.dispose()
        self._inst = self._settings = None


_LOCAL = _LocalInstance()


# Worker processes with nothing to do for this long are stopped (a server that ran a backlog
# once does not keep them, and their memory, for good); the next call starts new ones.
WORKERS_IDLE_S = 600.0


class _LocalWorkers:
    """The local profile's worker processes, by how many, kept warm between calls.

    Started on the first call that runs contracts side by side and kept, so
    later calls pay neither Dagster's import nor the definitions' build again
    (a delivery of 10,000 rows is done in about 0.15 s; a fresh process takes
    seconds to import Dagster), until ``WORKERS_IDLE_S`` pass without a call.
    Spawned, not forked: Polars' thread pool does not survive a fork. A pool
    whose worker died is dropped.
    """

    def __init__(self) -> None:
        self.pools: dict[int, ProcessPoolExecutor] = {}
        self._lock = threading.Lock()
        self._busy = 0
        self._timer: threading.Timer | None = None

    @contextmanager
    def use(self, width: int) -> Iterator[ProcessPoolExecutor]:
        import multiprocessing as mp

        with self._lock:
            self._busy += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            pool = self.pools.get(width)
            if pool is None:
                pool = self.pools[width] = ProcessPoolExecutor(max_workers=width, mp_context=mp.get_context("spawn"),
                                                               initializer=_warm_worker,
                                                               initargs=(dict(os.environ), os.getcwd()))
        try:
            yield pool
        except BrokenProcessPool:
            with self._lock:
                if self.pools.get(width) is pool:
                    del self.pools[width]
            raise
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy and self.pools:
                    self._timer = threading.Timer(WORKERS_IDLE_S, self.stop, kwargs={"only_if_idle": True})
                    self._timer.daemon = True
                    self._timer.start()

    def stop(self, only_if_idle: bool = False) -> None:
        with self._lock:
            if only_if_idle and self._busy:
                return
            pools = list(self.pools.values())
            self.pools.clear()
        for pool in pools:
            pool.shutdown(wait=not only_if_idle, cancel_futures=True)


_WORKERS = _LocalWorkers()


def start_local_workers(width: int | None = None) -> None:
    """Start (and warm) the local profile's worker processes now, not on the first call that needs them.

    Returns once every worker has answered, that is once each is warm (the
    pool warms a worker before it takes a task: ``_warm_worker``); a worker
    still warming takes no task, so the others answer until it does.
    """
    s = settings()
    width = width or s.local_runs
    if width > 1:
        if s.profile != "cluster":
            with _run_instance(s):  # its storages created here, not by two workers at once
                pass
        with _WORKERS.use(width) as pool:
            seen: set[int] = set()
            deadline = time.monotonic() + WARM_TIMEOUT_S
            while len(seen) < width and time.monotonic() < deadline:
                seen |= {f.result() for f in [pool.submit(_pid_after, 0.05) for _ in range(width)]}


# How long start_local_workers waits for every worker to be warm (a fresh process imports Dagster).
WARM_TIMEOUT_S = 120.0


def _pid_after(seconds: float) -> int:
    """This worker's process id, after a pause that leaves the other tasks to the other workers."""
    time.sleep(seconds)
    return os.getpid()


def stop_local_workers() -> None:
    """Stop the local worker processes (the next call that needs them starts new ones)."""
    _WORKERS.stop()


def _warm_worker(env: dict[str, str], cwd: str) -> None:
    """Make a new worker process ready to run: what a run imports, the definitions built, the instance open.

    With the environment of the call that started it (``_run_in_worker``
    takes each call's own). Opening the instance the first time also imports
    its storages and checks their schemas: 0.9 s of CPU per worker, which a
    worker's first run paid (``benchmarks/processing.py``: 1.9 s of a
    25 s batch of 200 deliveries on two workers). A lab that cannot be
    opened here is left to the first run, which reports it.
    """
    _set_environment(env, cwd)
    import pipelines.definitions  # noqa: F401

    s = settings()
    if s.profile == "cluster":
        return
    with suppress(Exception):  # the first run meets the same error and reports it with the run
        _defs()
        with _run_instance(s):
            pass


def _set_environment(env: dict[str, str], cwd: str) -> None:
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
    if os.getcwd() != cwd:
        os.chdir(cwd)


def _run_in_worker(env: dict[str, str], cwd: str, contract_id: str, batch: list[str]) -> list[DeliveryRun]:
    """One run in a worker process, with the caller's environment and working directory.

    The local profile's workers outlive a call, and the caller's environment
    can change between calls (another lab, another engine); each run takes
    the one it was asked with, as a process spawned for it would. The
    cluster profile reconstructs the job from ``pipelines.definitions``
    (no definitions passed).
    """
    _set_environment(env, cwd)
    s = settings()
    c = contracts_mod.load_all(s.contracts_dir)[contract_id]
    with _run_instance(s) as inst:
        return _portable_errors(_run_batch, c, batch, inst, _defs() if s.profile != "cluster" else None, s)


T = TypeVar("T")


def fair_order(todo: list[tuple[Contract, T]]) -> list[tuple[Contract, T]]:
    """Round-robin over firms: the n-th run of every firm before the (n+1)-th of any."""
    by_tenant: dict[str, list[tuple[Contract, T]]] = {}
    for item in todo:
        by_tenant.setdefault(item[0].tenant, []).append(item)
    queues = [by_tenant[t] for t in sorted(by_tenant)]
    return [q[i] for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]


def publish(dataset: str) -> dict:
    """Materialise the dataset asset (publishes a version if anything changed).

    Cluster profile: driven from a spawned process, like every cluster run
    (``run_pending``): the process imports the definitions for the settings
    of now, so the step goes to the broker and queue the workers of this lab
    listen on (see ``_execute``).
    """
    if settings().profile == "cluster":
        return _in_spawned_process(_publish_here, dataset)
    return _publish_here(dataset)


def _in_spawned_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process (its own imports and settings, read from this environment)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_portable_errors, fn, *args).result()


def _portable_errors(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn``; a DatalabError that would not survive pickling comes back as a plain one with its message."""
    import pickle

    try:
        return fn(*args)
    except DatalabError as e:
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            plain = DatalabError(str(e))
            plain.hint = e.hint
            raise plain from None
        raise


def _publish_here(dataset: str) -> dict:
    from pipelines.definitions import publish_job_name

    defs = _defs()
    if not _has_job(defs, publish_job_name(dataset)):
        raise NotFound(f"no dataset {dataset!r} (the dataset specs are in data_contracts/datasets/)")
    result = _execute(publish_job_name(dataset), instance(), {"datalab/source": "cli"}, defs=defs)
    if not result.success:
        raise DatalabError(_error(result))
    mats = [ev.event_specific_data.materialization for ev in result.all_events
            if ev.event_type_value == "ASSET_MATERIALIZATION"]
    return {k: v.value for k, v in mats[-1].metadata.items()} if mats else {}


def _has_job(defs: dg.Definitions, name: str) -> bool:
    try:
        defs.resolve_job_def(name)
        return True
    except Exception:
        return False


class DagsterRunner:
    """The lab's pipelines for the CLI and the service (``datalab.runs.Runner``).

    Declared in ``pyproject.toml`` as the entry point ``dagster`` of the group
    ``datalab.runners``; the core finds it there (``datalab.runs.runner``)
    and never imports this package.
    """

    def run_pending(self, contract_ref: str | None = None, on_event: Callable[[DeliveryRun], None] | None = None,
                    parallel: int | None = None) -> list[DeliveryRun]:
        return run_pending(contract_ref, on_event=on_event, parallel=parallel)

    def publish(self, dataset: str) -> dict:
        return publish(dataset)

    def instance(self) -> dg.DagsterInstance:
        return instance()

    def purge(self, contract_id: str, deliveries: list[str], versions: list[tuple[str, str]], s: Settings) -> dict[str, Any]:
        from pipelines.retention import purge_dagster

        return purge_dagster(contract_id, deliveries, versions, s)

    def rollup(self, dry_run: bool, actor: str) -> list[dict[str, Any]]:
        from pipelines import rollup

        s = settings()
        return [r.to_dict() for r in rollup.rollup(_cluster_instance(s), s, actor=actor, dry_run=dry_run)]


DAGSTER = DagsterRunner()
