"""datalab: the federated data lab's core (contracts, landing, curation,
validation, publishing, policy, pull). It never imports Dagster; heavy
libraries (Great Expectations, pyiceberg, cudf) are imported where used.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__version__ = "0.1.0"

# Polars' allocator (jemalloc) gives freed pages back to the kernel after
# 0.5 s by default, so each curation bucket faults its memory in afresh
# (2-3 s of kernel time per 10 M rows). Keeping dirty pages for 5 s, then
# returning them at once, curated 10 M rows in 5.8-6.0 s instead of
# 6.2-6.4 s at 60-100 MB more peak. jemalloc reads this when Polars is
# loaded (Polars appends it to its own defaults, so it wins), so it is set
# here, before any datalab module imports Polars, and only if the operator
# has not set ``_RJEM_MALLOC_CONF`` (or ``DATALAB_POLARS_ALLOCATOR=default``).
POLARS_ALLOCATOR = "dirty_decay_ms:5000,muzzy_decay_ms:0"
if "polars" not in sys.modules and os.environ.get("DATALAB_POLARS_ALLOCATOR", "") != "default":
    os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_ALLOCATOR)


def open(name: str, version: str | None = None, purpose: str | None = None, **kw: Any) -> Any:
    """Open a published dataset version as a Polars LazyFrame, after the policy check.

    ``datalab.open("plant-telemetry", version="1.0.0", purpose="research")``.
    The purpose is required: it is checked against the version's effective
    sovereignty policy and the access is written to the audit log.
    """
    from datalab.pull import open_dataset

    return open_dataset(name, version=version, purpose=purpose, **kw)
