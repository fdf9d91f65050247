"""The cluster executor's bounded waits (pipelines/celery_watch.py), decided on what the broker and workers say.

The decisions are tested with a stand-in for the broker and the workers and
a clock the test moves; the probe itself against RabbitMQ when one answers
(the end-to-end kill tests are in tests/test_cluster.py).
"""

from __future__ import annotations

import os
import secrets
import socket

import pytest

pytest.importorskip("dagster_celery", reason="the cluster extra (dagster-celery) is not installed")

from celery.exceptions import TaskRevokedError

from pipelines.celery_watch import BrokerProbe, StepLost, WatchedTask, WatchPolicy

POLICY = WatchPolicy(check_seconds=5, lost_after_seconds=10, no_worker_seconds=60, max_resubmits=2,
                     revoke_grace_seconds=10)


class Result:
    """A Celery AsyncResult stand-in: ready once ``done`` is set."""

    def __init__(self, n: int):
        self.id = f"task-{n}"
        self.done = False
        self.revoked = False

    def ready(self) -> bool:
        return self.done

    def get(self) -> str:
        return f"events of {self.id}"

    def revoke(self) -> None:
        self.revoked = True


class Probe:
    """What the broker and the workers would answer: ``ready`` messages, ``consumers``, who holds which task."""

    def __init__(self, ready: int = 0, consumers: int = 1, held: set[str] | None = None, complete: bool = True):
        self.ready, self.consumers, self.held, self.complete = ready, consumers, held or set(), complete

    def queue_state(self, queue: str) -> tuple[int, int]:
        return self.ready, self.consumers

    def holders(self, queue: str, task_id: str, consumers: int) -> tuple[list[str], bool]:
        return (["w1@host"] if task_id in self.held else []), self.complete


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _watched(probe: Probe) -> tuple[WatchedTask, list[Result], list[str], Clock]:
    results: list[Result] = []
    warnings: list[str] = []
    clock = Clock()

    def submit() -> Result:
        results.append(Result(len(results)))
        return results[-1]

    return WatchedTask(submit, probe, "q", POLICY, warnings.append, "raw", clock=clock), results, warnings, clock


def _poll(w: WatchedTask, clock: Clock, seconds: float) -> bool:
    """What the execution loop does: ``ready()`` once a second, for ``seconds``; True once ready."""
    for _ in range(int(seconds)):
        clock.t += 1
        if w.ready():
            return True
    return False


def test_a_step_on_a_worker_or_in_its_queue_is_waited_for() -> None:
    probe = Probe(held={"task-0"})
    w, results, warnings, clock = _watched(probe)
    assert not _poll(w, clock, 300)  # running for five minutes: a long step, not a lost one
    probe.held, probe.ready = set(), 3  # back in the queue (the broker redelivered it after a worker died)
    assert not _poll(w, clock, 300)
    results[0].done = True
    assert _poll(w, clock, 1) and w.get() == "events of task-0"
    assert len(results) == 1 and not warnings


def test_a_lost_step_is_submitted_again_and_its_new_result_counts() -> None:
    probe = Probe()  # one worker answers, holds nothing; nothing queued; no result
    w, results, warnings, clock = _watched(probe)
    assert not _poll(w, clock, 4)
    assert not _poll(w, clock, 30)  # seen absent, then absent for 10 s: submitted again
    assert len(results) >= 2 and w.id == results[-1].id and w.resubmits == len(results) - 1
    assert "task-0 was lost" in warnings[0] and "submitted again as task-1" in warnings[0]
    results[-1].done = True
    assert _poll(w, clock, 1) and w.get() == f"events of {results[-1].id}"


def test_a_step_lost_more_often_than_allowed_fails_with_the_reason() -> None:
    w, results, warnings, clock = _watched(Probe())
    assert _poll(w, clock, 300)
    assert len(results) == 1 + POLICY.max_resubmits and len(warnings) == POLICY.max_resubmits
    with pytest.raises(StepLost, match="lost 3 times"):
        w.get()


def test_a_worker_that_does_not_answer_may_hold_the_step() -> None:
    w, results, warnings, clock = _watched(Probe(complete=False))
    assert not _poll(w, clock, 600)  # no resubmission while a consumer of the queue is silent
    assert len(results) == 1 and not warnings


def test_a_look_that_fails_decides_nothing() -> None:
    class Flaky(Probe):
        def holders(self, queue: str, task_id: str, consumers: int) -> tuple[list[str], bool]:
            raise ConnectionError("the broker did not answer")

    w, results, warnings, clock = _watched(Flaky())
    assert not _poll(w, clock, 300)
    assert len(results) == 1 and not warnings


def test_a_queue_nobody_consumes_fails_the_step_after_the_bound() -> None:
    probe = Probe(ready=1, consumers=0)
    w, results, _, clock = _watched(probe)
    assert not _poll(w, clock, 30)
    probe.consumers = 1  # a worker came: the clock starts again when it leaves
    assert not _poll(w, clock, 10)
    probe.consumers = 0
    assert not _poll(w, clock, 50)
    assert _poll(w, clock, 30)
    with pytest.raises(StepLost, match=r"no Celery worker consumed queue 'q' for 6\d s; start one with `datalab worker`"):
        w.get()
    assert len(results) == 1


def test_an_interrupt_does_not_wait_for_a_worker_that_never_confirms() -> None:
    w, results, _, clock = _watched(Probe(ready=1, consumers=0))
    w.revoke()
    assert results[0].revoked
    assert _poll(w, clock, 11)
    with pytest.raises(TaskRevokedError):
        w.get()


BROKER = os.environ.get("DATALAB_TEST_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")


def test_the_probe_reads_the_broker_and_the_workers() -> None:
    """Against RabbitMQ: a queue with one waiting message and no consumer; a queue that does not exist."""
    from celery import Celery
    from kombu import Connection, Exchange, Queue

    host_port = BROKER.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex((host or "127.0.0.1", int(port or 5672))) != 0:
            pytest.skip(f"no RabbitMQ broker at {BROKER} (set DATALAB_TEST_BROKER_URL)")
    name = f"dl-test-probe-{secrets.token_hex(4)}"
    app = Celery(broker=BROKER, set_as_current=False)
    probe = BrokerProbe(app, timeout=0.5)
    with Connection(BROKER) as conn:
        q = Queue(name, Exchange(name, type="direct"), routing_key=name, durable=False, auto_delete=False)
        producer = conn.Producer()
        producer.publish({"x": 1}, exchange=q.exchange, routing_key=name, declare=[q])
        try:
            assert probe.queue_state(name) == (1, 0)
            assert probe.holders(name, "no-such-task", 0) == ([], True)
            assert probe.holders(name, "no-such-task", 1) == ([], False)  # a consumer that did not answer
        finally:
            ch = conn.channel()
            ch.queue_delete(name)
            ch.exchange_delete(name)
    assert probe.queue_state(name) == (0, 0)
