"""What a long-lived lab process loads once, before its first delivery: the lab's code, its contracts, the publish stack.

A delivery pushed to the service, curated by a local worker and published by
the service pays, in a fresh process, about 1.5 s of one core before any of
its rows are read: importing Polars, SQLAlchemy and the lab (0.45 s), parsing
and linting the contracts (0.2 s, remembered on disk afterwards), and at
publish pyiceberg with pyarrow's dataset and compute modules (0.6 s) and
matplotlib (0.3 s) (docs/performance.md, "Cold and warm"). A process that
serves many deliveries pays them once: the service warms each of its worker
processes on a thread as it starts (``datalab serve``), and a benchmark says
whether it measured a cold process or a warm one (``benchmarks/e2e.py --warm``).

Only imports and read-only loads happen here: nothing of a lab is created or
changed, and a failure is left to the first real use, which reports it.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def warm_process(publishes: bool = True) -> float:
    """Import the lab's delivery path, load the contracts, and (``publishes``) the publish stack; seconds taken."""
    t0 = time.perf_counter()
    from datalab.config import settings
    from datalab.contracts import contract
    from datalab.intake import landing  # noqa: F401
    from datalab.kinds import kind_of
    from datalab.quality import validate  # noqa: F401
    from datalab.store import publish

    try:
        # parsed, and linted once per contract and linter (on disk); each contract's kind imported (its curation)
        for c in contract.load_all(settings().contracts_dir).values():
            kind_of(c)
    except Exception as e:  # a broken contract is reported by the push or run that meets it
        log.info("warm-up: contracts not loaded (%s)", e)
    if publishes:
        publish.preload()
    return time.perf_counter() - t0


def warm_in_background(publishes: bool = True) -> threading.Thread:
    """:func:`warm_process` on a daemon thread (a service starting: requests are served meanwhile)."""
    def run() -> None:
        try:
            log.info("warm-up: %.2f s", warm_process(publishes))
        except Exception as e:  # the first request meets the same error and reports it
            log.info("warm-up failed: %s", e)

    t = threading.Thread(target=run, name="datalab-warm-up", daemon=True)
    t.start()
    return t
