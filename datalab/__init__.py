"""datalab: the federated data lab's core (contracts, landing, curation,
validation, publishing, policy, pull). It never imports Dagster; heavy
libraries (Great Expectations, pyiceberg, cudf) are imported where used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def open(name: str, version: str | None = None, purpose: str | None = None, **kw: Any) -> Any:
    """Open a published dataset version as a Polars LazyFrame, after the policy check.

    ``datalab.open("plant-telemetry", version="1.0.0", purpose="research")``.
    The purpose is required: it is checked against the version's effective
    sovereignty policy and the access is written to the audit log.
    """
    from datalab.pull import open_dataset

    return open_dataset(name, version=version, purpose=purpose, **kw)
