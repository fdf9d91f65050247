"""Rate limits of the service: per token and per client address, with counted summaries.

Two token buckets (capacity = the per-minute limit, refilled continuously):

* per **token** (its id): every request an authenticated caller sends;
* per **client address**: the requests that end without a valid token (401),
  so anonymous traffic and token guessing cannot fill the audit log or take
  the catalog's write lock from the firms' pushes.

A request over a limit is answered 429 with ``Retry-After`` (seconds until a
request fits again), before any database work. Refusals over a limit are not
audited one by one (that was the flood): they are counted per (kind, key)
and written as one ``ratelimit`` audit entry per key with the count and the
time span, at most every ``FLUSH_S`` seconds and when the server stops.

The intake's pacing (``datalab.intake.pacing``, kind ``waiting``, key the
contract) counts its 429s here too, with its message as the summary's reason.

The buckets live in the worker process: with ``--workers N`` a client may
get up to N times the limit if its connections spread over the workers.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from datalab.config import Settings
from datalab.store import catalog as cat

FLUSH_S = 10.0
MAX_KEYS = 100_000  # buckets kept; the fullest (idle) ones are dropped first beyond this


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _Refused:
    count: int = 0
    first: str = ""
    last: str = ""
    paths: dict[str, int] = field(default_factory=dict)
    reason: str = ""  # the last refusal's message, where the kind has more to say than its limit


class RateLimiter:
    """Token buckets per (kind, key) and the counts of refusals not yet audited."""

    def __init__(self, per_min: dict[str, int]):
        self.per_min = per_min  # kind ("token", "address") -> requests per minute; 0 = off
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._refused: dict[tuple[str, str], _Refused] = {}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def _bucket(self, kind: str, key: str, now: float) -> _Bucket:
        cap = self.per_min[kind]
        b = self._buckets.get((kind, key))
        if b is None:
            if len(self._buckets) >= MAX_KEYS:
                self._prune(now)
            b = self._buckets[(kind, key)] = _Bucket(float(cap), now)
        else:
            b.tokens = min(float(cap), b.tokens + (now - b.at) * cap / 60.0)
            b.at = now
        return b

    def _prune(self, now: float) -> None:
        for k in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.per_min[k[0]] / 60.0
                  >= self.per_min[k[0]]]:
            del self._buckets[k]
        if len(self._buckets) >= MAX_KEYS:
            self._buckets.clear()

    def retry_after(self, kind: str, key: str, take: bool) -> int | None:
        """None when a request fits (taking one token if ``take``); else seconds to wait."""
        cap = self.per_min.get(kind, 0)
        if cap <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            b = self._bucket(kind, key, now)
            if b.tokens >= 1.0:
                if take:
                    b.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - b.tokens) * 60.0 / cap))

    def charge(self, kind: str, key: str) -> None:
        """Take one token (a request that counts only once its outcome is known, e.g. a 401)."""
        self.retry_after(kind, key, take=True)

    def count_refusal(self, kind: str, key: str, path: str, reason: str = "") -> bool:
        """Count one request refused over a limit (``reason``: the last message, kept); True when a summary is due."""
        ts = cat.now_iso()
        with self._lock:
            r = self._refused.setdefault((kind, key), _Refused(first=ts))
            r.count += 1
            r.last = ts
            r.reason = reason[:500] or r.reason
            if len(r.paths) < 20 or path in r.paths:
                r.paths[path[:100]] = r.paths.get(path[:100], 0) + 1
            return time.monotonic() - self._flushed >= FLUSH_S

    def flush(self, s: Settings) -> int:
        """Write one audit entry per key refused since the last flush; returns how many."""
        with self._lock:
            pending, self._refused = self._refused, {}
            self._flushed = time.monotonic()
        if not pending:
            return 0
        catalog = cat.Catalog(s.catalog_url)
        with catalog.begin() as conn:
            for (kind, key), r in pending.items():
                detail: dict[str, Any] = {"status": 429, "count": r.count, "first": r.first, "last": r.last,
                                          "limit_per_min": self.per_min.get(kind), "paths": r.paths}
                if r.reason:
                    detail["reason"] = r.reason
                catalog.audit(f"{kind}:{key}"[:200], "ratelimit", kind, "refused", detail, conn=conn)
        return len(pending)


def from_settings(s: Settings) -> RateLimiter:
    return RateLimiter({"token": s.rate_token_per_min, "address": s.rate_address_per_min})
