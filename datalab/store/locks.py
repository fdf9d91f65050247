"""One publish of a dataset at a time, across processes and machines.

Two publishes of the same dataset racing would both read the same latest
version, both write an Iceberg snapshot and both claim the same next version
number: the loser fails half-way (an Iceberg commit conflict or a duplicate
version row). Publishing holds this lock around its read-decide-commit, so
the second publish sees the first one's version and publishes only what is
new (or nothing). On PostgreSQL (the cluster profile: publishes from workers
on several machines) it is a session advisory lock; on SQLite (one machine)
a file lock beside the catalog.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import sqlalchemy as sa

from datalab.config import Settings, safe_segment
from datalab.store import catalog as cat


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"datalab:publish:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def publish_lock(name: str, s: Settings) -> Iterator[None]:
    """Hold the dataset's publish lock (blocks until the other publish is done)."""
    if s.catalog_url.startswith("postgresql"):
        engine = cat.Catalog(s.catalog_url).engine
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _key(name)})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(name)})
                conn.commit()
        return
    import fcntl

    d = s.home / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"publish-{safe_segment(name, 'dataset')}.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
