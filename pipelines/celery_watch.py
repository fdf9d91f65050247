"""The cluster profile's Celery executor: dagster-celery's, with a bound on every wait.

dagster-celery submits each step as a Celery task and then polls the task's
result, with no limit: a task that no worker will ever run (its message sits
in a queue nobody consumes, or it was lost) keeps the run waiting forever,
and even an interrupt does not end the wait (the executor revokes the task
and then waits for the revocation, which only a worker can confirm). The
Celery settings (``task_acks_late``, ``task_reject_on_worker_lost``, prefetch
1) make the broker hand a killed worker's step to another worker; this
executor makes sure the run notices when that does not happen:

* every ``check_seconds`` a pending step's task is looked for: waiting in its
  queue, or held (active, reserved) by a worker that consumes the queue;
* a task that is in neither place, while every consumer of the queue answered
  and no result came, for ``lost_after_seconds``, was lost: it is submitted
  again (the step re-executes; raw and curated writes are idempotent per
  delivery), at most ``max_resubmits`` times, then the step fails;
* a queue without any consumer for ``no_worker_seconds`` fails the step with
  the queue's name (start ``datalab worker``), instead of waiting for a
  worker that may never come;
* after an interrupt the revoked task is waited on for ``revoke_grace_seconds``
  at most.

So a run either finishes or fails with the reason within bounded time; the
runner reports it and the delivery stays pending for the next run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import dagster as dg
from celery.exceptions import TaskRevokedError
from dagster._core.execution.retries import RetryMode
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

from datalab.errors import DatalabError


@dataclass(frozen=True)
class WatchPolicy:
    """How often a pending step is looked for, and how long each kind of absence is waited out."""

    check_seconds: float = 5.0
    lost_after_seconds: float = 10.0
    no_worker_seconds: float = 120.0
    max_resubmits: int = 2
    revoke_grace_seconds: float = 10.0
    inspect_timeout: float = 1.0


WATCH_CONFIG = {
    "check_seconds": dg.Field(float, default_value=WatchPolicy.check_seconds,
                              description="How often a pending step's task is looked for (seconds)."),
    "lost_after_seconds": dg.Field(float, default_value=WatchPolicy.lost_after_seconds,
                                   description="A task neither queued nor held by a worker this long was lost."),
    "no_worker_seconds": dg.Field(float, default_value=WatchPolicy.no_worker_seconds,
                                  description="A step whose queue has no consumer this long fails."),
    "max_resubmits": dg.Field(int, default_value=WatchPolicy.max_resubmits,
                              description="How many times a lost step is submitted again before it fails."),
    "revoke_grace_seconds": dg.Field(float, default_value=WatchPolicy.revoke_grace_seconds,
                                     description="After an interrupt, how long a revoked task is waited on."),
}


class StepLost(DatalabError):
    """A step's Celery task will not run: no worker consumes its queue, or it was lost too often."""


class Probe(Protocol):
    """Where a task can be: what the broker and the workers say."""

    def queue_state(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of the queue."""
        ...

    def holders(self, queue: str, task_id: str, consumers: int) -> tuple[list[str], bool]:
        """The workers that hold the task (active, reserved, scheduled), and whether every consumer answered."""
        ...


class BrokerProbe:
    """The broker (a passive queue declare) and the workers (remote control) through the run's Celery app."""

    def __init__(self, app: Any, timeout: float = WatchPolicy.inspect_timeout):
        self.app = app
        self.timeout = timeout

    def queue_state(self, queue: str) -> tuple[int, int]:
        with self.app.pool.acquire(block=True, timeout=30) as conn:
            channel = conn.channel()
            try:
                _, ready, consumers = channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors:  # no such queue: nothing waits there and nobody consumes it
                return 0, 0
            finally:
                with contextlib.suppress(Exception):  # already closed by the broker (a missing queue closes it)
                    channel.close()
        return int(ready), int(consumers)

    def holders(self, queue: str, task_id: str, consumers: int) -> tuple[list[str], bool]:
        control = self.app.control
        by_worker = control.inspect(timeout=self.timeout).active_queues() or {}
        workers = sorted(w for w, qs in by_worker.items() if any((q or {}).get("name") == queue for q in qs or []))
        if len(workers) < consumers:  # a consumer did not answer: it may hold the task
            return [], False
        if not workers:
            return [], True
        replies = control.inspect(timeout=self.timeout, destination=workers).query_task(task_id) or {}
        held = sorted(w for w, tasks in replies.items() if tasks and task_id in tasks)
        return held, all(w in replies for w in workers)


class WatchedTask:
    """What dagster-celery's execution loop polls for one step: the step's current Celery task, watched.

    The loop calls ``ready()`` every second, ``get()`` once ready and
    ``revoke()`` on an interrupt; a lost task is replaced by a new submission
    of the same step, transparently for the loop.
    """

    def __init__(self, submit: Callable[[], Any], probe: Probe, queue: str, policy: WatchPolicy,
                 warn: Callable[[str], None], step_key: str, clock: Callable[[], float] = time.monotonic):
        self._submit = submit
        self._probe = probe
        self._queue = queue
        self._policy = policy
        self._warn = warn
        self._clock = clock
        self.step_key = step_key
        self.result = submit()
        self.resubmits = 0
        self._failure: BaseException | None = None
        self._next_check = clock() + policy.check_seconds
        self._absent_since: float | None = None
        self._no_consumer_since: float | None = None
        self._revoked_at: float | None = None

    @property
    def id(self) -> str:
        return self.result.id

    def ready(self) -> bool:
        if self._failure is not None or self.result.ready():
            return True
        now = self._clock()
        if self._revoked_at is not None:
            if now - self._revoked_at >= self._policy.revoke_grace_seconds:
                self._failure = TaskRevokedError(f"step {self.step_key}: no worker confirmed the revocation")
            return self._failure is not None
        if now < self._next_check:
            return False
        self._next_check = now + self._policy.check_seconds
        try:
            self._check(now)
        except Exception:  # the broker or the workers did not answer this time: no decision on this look
            self._absent_since = None
        return self._failure is not None

    def get(self) -> Any:
        if self._failure is not None:
            raise self._failure
        return self.result.get()

    def revoke(self) -> None:
        self._revoked_at = self._clock()
        self.result.revoke()

    def _check(self, now: float) -> None:
        p = self._policy
        ready, consumers = self._probe.queue_state(self._queue)
        if consumers == 0:
            self._absent_since = None
            if self._no_consumer_since is None:
                self._no_consumer_since = now
            elif now - self._no_consumer_since >= p.no_worker_seconds:
                self._failure = StepLost(
                    f"step {self.step_key}: no Celery worker consumed queue {self._queue!r} for "
                    f"{now - self._no_consumer_since:.0f} s; start one with `datalab worker` "
                    "(same broker and DATALAB_CELERY_QUEUE) and run again")
            return
        self._no_consumer_since = None
        if ready:  # waiting in the queue (its own turn or behind others)
            self._absent_since = None
            return
        held, complete = self._probe.holders(self._queue, self.result.id, consumers)
        if held or not complete or self.result.ready():
            self._absent_since = None
            return
        if self._absent_since is None:
            self._absent_since = now
            return
        if now - self._absent_since < p.lost_after_seconds:
            return
        self._absent_since = None
        if self.resubmits >= p.max_resubmits:
            self._failure = StepLost(
                f"step {self.step_key}: its Celery task was lost {self.resubmits + 1} times (neither in queue "
                f"{self._queue!r} nor on any of its {consumers} worker(s), and no result)")
            return
        lost = self.result.id
        self.resubmits += 1
        self.result = self._submit()
        self._warn(f"step {self.step_key}: Celery task {lost} was lost (neither in queue {self._queue!r} nor on "
                   f"any of its {consumers} worker(s), no result for {p.lost_after_seconds:.0f} s); submitted "
                   f"again as {self.result.id} ({self.resubmits} of at most {p.max_resubmits})")


class WatchedCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor whose step tasks are :class:`WatchedTask` s."""

    def __init__(self, retries: RetryMode, watch: WatchPolicy, **kwargs: Any):
        super().__init__(retries, **kwargs)
        self.watch = watch

    def execute(self, plan_context: Any, execution_plan: Any) -> Any:
        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=self._submit)

    def _submit(self, app: Any, plan_context: Any, step: Any, queue: str, priority: int,
                known_state: Any) -> WatchedTask:
        def submit() -> Any:
            return _submit_task(app, plan_context, step, queue, priority, known_state)

        log = plan_context.for_step(step).log
        return WatchedTask(submit, BrokerProbe(app, self.watch.inspect_timeout), queue, self.watch,
                           log.warning, step.key)


@dg.executor(name="celery", config_schema={**CELERY_CONFIG, "watch": dg.Field(WATCH_CONFIG, is_required=False)},
             requirements=dg.multiple_process_executor_requirements())
def watched_celery_executor(init_context: dg.InitExecutorContext) -> WatchedCeleryExecutor:
    """dagster-celery's executor (same config) with the bounded waits of :class:`WatchedTask`."""
    cfg = init_context.executor_config
    return WatchedCeleryExecutor(
        retries=RetryMode.from_config(cfg["retries"]),
        watch=WatchPolicy(**cfg.get("watch", {})),
        broker=cfg.get("broker"), backend=cfg.get("backend"), config_source=cfg.get("config_source"),
        include=cfg.get("include"),
    )
