"""datalab: the federated data lab's core (contracts, landing, curation,
validation, publishing, policy, pull). It never imports Dagster; heavy
libraries (Great Expectations, pyiceberg, cudf) are imported where used.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from datalab.version import __version__  # noqa: F401  (the version lives in datalab/version.py)

# Polars' allocator (jemalloc) gives freed pages back to the kernel soon
# after they are freed by default, so each curation bucket faults its memory
# in afresh, at a cost in kernel time. Keeping dirty pages for 2 s curates
# faster at the same peak; a longer decay was faster still but kept more
# memory and raised the peak of a large run (in validation). The
# measurements are in docs/performance.md ("Why the code is as it is").
# jemalloc reads this when Polars is loaded (Polars appends it to its own
# defaults, so it wins), so it is set here, before any datalab module
# imports Polars, and only if the operator has not set ``_RJEM_MALLOC_CONF``
# (or ``DATALAB_POLARS_ALLOCATOR=default``).
POLARS_ALLOCATOR = "dirty_decay_ms:2000,muzzy_decay_ms:0"
# (``datalab.config.keep_polars_allocator`` reads the variable; config imports no Polars.)
from datalab.config import keep_polars_allocator  # noqa: E402

if "polars" not in sys.modules and not keep_polars_allocator():
    os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR)


def open(name: str, version: str | None = None, purpose: str | None = None, **kw: Any) -> Any:
    """Open a published dataset version as a Polars LazyFrame, after the policy check.

    ``datalab.open("plant-telemetry", version="1.0.0", purpose="research")``.
    The purpose is required: it is checked against the version's effective
    sovereignty policy and the access is written to the audit log.
    """
    from datalab.store.pull import open_dataset

    return open_dataset(name, version=version, purpose=purpose, **kw)
