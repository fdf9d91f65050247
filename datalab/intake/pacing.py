"""Intake pacing: a push waits while its contract's processing is behind.

The service lands a small delivery in a fraction of what curating and
validating it costs (about 45 against 110 core-ms for 10,000 rows on two
cores, docs/performance.md). Firms that push as fast as the service takes
them therefore fill a queue the runs cannot empty, and every delivery's
push-to-validated time grows with it for as long as they push: 500 such
pushes left the last ones validated 30 s after their receipts. Pacing
bounds that queue per contract: while the contract's deliveries are being
processed (one was validated or failed within ``LIVE_S``), at most
``DATALAB_INTAKE_MAX_WAITING`` of its accepted deliveries wait; a push
beyond that is refused before its body is stored (HTTP 429, Retry-After),
and the client pushes it again once the runs have caught up
(:meth:`datalab.client.Client.push` does). Nothing is lost: the firm still
holds what it was told to push again, and what was accepted stays accepted.

Pacing stays out of the way where it cannot help:

* while nothing processes the contract (no daemon running, a lab being
  filled before its first run), every push is taken: landing the data is
  the promise, processing catches up later;
* only deliveries received within ``WINDOW_S`` count, so one that never
  gets processed (a stuck run) cannot hold a contract's pushes for ever;
* a firm that pushes now and then never meets it (a delivery or two of its
  contract wait at most, far below the bound).

It is per contract, like the runs' order (one contract's runs go one after
the other): one firm's flood waits on its own backlog, not on the lab's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from datalab.config import Settings
from datalab.store import state

WINDOW_S = 300.0  # deliveries received longer ago do not count
# The contract's runs are going if one of its deliveries ended this recently:
# longer than a run of a few small deliveries (paced, a contract's runs end
# every 2-5 s on two cores), shorter than the sensor's 30 s between ticks, so
# that under the Dagster daemon pushes are paced while a tick's runs go and
# taken freely in between (the next tick takes what came).
LIVE_S = 10.0
RETRY_AFTER_S = 1  # what the refusal asks a client to wait: about a run of a few small deliveries


@dataclass(frozen=True)
class Wait:
    """A push that must wait: the contract's backlog and the rule it is over."""

    contract: str
    waiting: int
    bound: int
    retry_after_s: int

    @property
    def message(self) -> str:
        return (f"{self.contract}: {self.waiting} accepted deliveries wait for processing, at most {self.bound} "
                f"while it runs (DATALAB_INTAKE_MAX_WAITING); nothing of this push was stored: push it again "
                f"after {self.retry_after_s} s")


def must_wait(contract_id: str, s: Settings, now: dt.datetime | None = None) -> Wait | None:
    """A :class:`Wait` when the contract is at its bound while its processing runs, else None."""
    if s.intake_max_waiting <= 0:
        return None
    now = now or dt.datetime.now(dt.UTC)
    b = state.backlog(contract_id, now - dt.timedelta(seconds=WINDOW_S), s)
    if b.waiting < s.intake_max_waiting or b.last_processed is None:
        return None
    if dt.datetime.fromisoformat(b.last_processed) < now - dt.timedelta(seconds=LIVE_S):
        return None  # nothing processed it lately: take the push, the runs catch up when they come
    return Wait(contract_id, b.waiting, s.intake_max_waiting, RETRY_AFTER_S)
