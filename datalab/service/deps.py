"""Authentication and authorisation for the routes, and the shared error type.

Every refusal is written to the audit log before it is answered: a missing
or bad token (401), a principal of the wrong kind or role (403), something
another tenant owns (404, so its existence is not revealed), a malformed or
oversized upload, a replayed idempotency key. Tokens are never logged, only
their id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request

from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts.contract import Contract
from datalab.policy import auth
from datalab.store import catalog as cat


class ApiError(Exception):
    """An answer other than success: status, a message for the caller, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, audited: bool = False):
        self.status, self.message, self.headers = status, message, headers or {}
        # False: the exception handler writes the audit entry (every refusal is logged once).
        self.audited = audited
        super().__init__(message)


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def refuse(request: Request, actor: str, action: str, subject: str, status: int, message: str,
           headers: dict[str, str] | None = None, s: Settings | None = None) -> ApiError:
    """Audit a refusal and return the error to raise."""
    s = s or settings()
    cat.Catalog(s.catalog_url).audit(actor[:200], action, subject[:300], "refused", {
        "status": status, "reason": message[:500], "method": request.method,
        "path": request.url.path[:300], "client": client_of(request)})
    return ApiError(status, message, headers, audited=True)


def current_principal(request: Request) -> auth.Principal:
    """The principal of the request's bearer token, or 401 (audited)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="datalab"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise refuse(request, "anonymous", "auth", request.url.path, 401,
                     "missing bearer token: send 'Authorization: Bearer dl_<id>_<secret>'", challenge)
    token = token.strip()
    try:
        p = auth.authenticate(token)
    except auth.AuthError as e:
        tid = auth.token_id(token)
        if (wait := over_limit(request, "address", client_of(request), take=False)) is not None:
            raise wait from None  # this address already spent its budget of failed tokens: counted, not logged
        raise refuse(request, f"token:{tid or 'malformed'}", "auth", request.url.path, 401,
                     f"invalid token: {e}", challenge) from None
    tid = auth.token_id(token) or ""
    if (wait := over_limit(request, "token", tid, take=True)) is not None:
        raise wait
    request.state.principal = p
    return p


def over_limit(request: Request, kind: str, key: str, take: bool) -> ApiError | None:
    """A 429 (counted for the summary, not audited one by one) if ``key`` is over its rate limit."""
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is None:
        return None
    wait = limiter.retry_after(kind, key, take)
    if wait is None:
        return None
    if limiter.count_refusal(kind, key, request.url.path):
        limiter.flush(settings())
    return ApiError(429, f"too many requests for this {kind}: at most {limiter.per_min[kind]} a minute; "
                    f"retry after {wait} s", {"Retry-After": str(wait)}, audited=True)


def need(kind: str, *roles: str) -> Callable[[Request], auth.Principal]:
    """A dependency: the caller must be of ``kind`` and hold one of ``roles``."""

    def dep(request: Request) -> auth.Principal:
        p = current_principal(request)
        if p.kind != kind or (roles and not set(roles) & set(p.roles)):
            want = f"a {kind} with role {' or '.join(roles)}" if roles else f"a {kind}"
            raise refuse(request, p.actor, "access", request.url.path, 403,
                         f"this endpoint is for {want}; {p.actor} is a {p.kind} with roles {p.roles}")
        return p

    return dep


_CONTRACTS: dict[str, tuple[Any, dict[str, Contract]]] = {}


def contracts(s: Settings) -> dict[str, Contract]:
    """The lab's contracts, re-read only when a contract file changed (pushes are frequent)."""
    d: Path = s.contracts_dir
    sig = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in d.rglob("*.yaml")))
    hit = _CONTRACTS.get(str(d))
    if hit is None or hit[0] != sig:
        hit = (sig, contracts_mod.load_all(d))
        _CONTRACTS[str(d)] = hit
    return hit[1]
