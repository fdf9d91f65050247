"""The FastAPI application of the lab service."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from datalab import __version__ as _version
from datalab.config import settings
from datalab.policy import auth
from datalab.service import admin, consumers, dsp, providers, ratelimit
from datalab.service.deps import ApiError, client_of, current_principal, over_limit, refuse

MAX_HEADER_BYTES = 32 << 10
MAX_HEADERS = 200
DESCRIPTION = """The federated data lab over HTTP.

* **providers** (member firms): their own contracts, pushes and receipts;
* **consumers** (ML teams): datasets and versions their declared purpose may reach from their site;
* **admin**: principals, tokens, audit log, runs and publishes.

Authenticate with `Authorization: Bearer dl_<id>_<secret>` (see `datalab token create`).
Errors are JSON `{"error": "..."}`; what another tenant owns answers 404.
"""


_SECRET = re.compile(r"(dl_[0-9a-f]{12}_)[A-Za-z0-9_-]+")
_SECRET_PARAM = re.compile(r"(?i)\b((?:access_)?token|authorization|secret|api[_-]?key)=[^&\s\"]*")


def redact(text: str) -> str:
    """``text`` without token secrets: ``dl_<id>_<secret>`` keeps its id, token-like query values go."""
    return _SECRET_PARAM.sub(r"\1=[redacted]", _SECRET.sub(r"\1[redacted]", text))


class RedactTokens(logging.Filter):
    """Takes token secrets out of uvicorn's access log lines (a token sent in a query string is refused,
    but the request line, query included, was logged at --log-level info)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _install_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        log = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in log.filters):
            log.addFilter(RedactTokens())


def _has_token(request: Request) -> bool:
    """Whether the request carries something shaped like a token (checked later, against the catalog)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and auth.token_id(token.strip()) is not None


def create_served_app() -> FastAPI:
    """The application as ``datalab serve`` runs it: each worker process warms itself as it starts.

    Its imports of the delivery and publish path and its contracts are loaded
    on a thread (``datalab.warm``), so the first push and publish do not pay
    them; an app built for a test (:func:`create_app`) does not.
    """
    return create_app(warm=True)


def create_app(warm: bool = False) -> FastAPI:
    """Build the application; the lab is whatever ``DATALAB_HOME`` etc. say (``warm``: :func:`create_served_app`)."""
    limiter = ratelimit.from_settings(settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm:
            from datalab.warm import warm_in_background

            warm_in_background()
        yield
        await run_in_threadpool(limiter.flush, settings())  # the refusals counted since the last summary

    app = FastAPI(title="datalab", version=_version, description=DESCRIPTION, lifespan=lifespan)
    app.state.limiter = limiter
    _install_redaction()  # in every worker process: each builds its own app
    auth.list_principals(settings())  # creates the service tables before the first request

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        if not e.audited and e.status >= 400:
            p = getattr(request.state, "principal", None)
            await run_in_threadpool(refuse, request, p.actor if p else "anonymous", "request", request.url.path,
                                    e.status, e.message)
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors()]
        p = getattr(request.state, "principal", None)
        await run_in_threadpool(refuse, request, p.actor if p else "anonymous", "request", request.url.path,
                                422, "; ".join(problems))
        return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Any:
        size = sum(len(k) + len(v) + 4 for k, v in request.scope["headers"])
        if size > MAX_HEADER_BYTES or len(request.scope["headers"]) > MAX_HEADERS:
            message = (f"request headers too large: {size:,} bytes in {len(request.scope['headers'])} fields "
                       f"(limit {MAX_HEADER_BYTES:,} bytes, {MAX_HEADERS} fields)")
            await run_in_threadpool(refuse, request, "anonymous", "request", request.url.path, 431, message)
            return JSONResponse({"error": message}, status_code=431, headers={"Connection": "close"})
        addr = client_of(request)
        if not _has_token(request) and (
                wait := await run_in_threadpool(over_limit, request, "address", addr, False)) is not None:
            # Without a valid token and over the address's budget: answered before any database work.
            return JSONResponse({"error": wait.message}, status_code=429, headers=wait.headers)
        response = await call_next(request)
        if response.status_code >= 400 and getattr(request.state, "principal", None) is None \
                and response.status_code != 429:
            limiter.charge("address", addr)  # a request that ended without a valid token
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/healthz", tags=["meta"], summary="Liveness (no authentication)")
    def healthz() -> dict[str, Any]:
        # A broken contract degrades the lab (its firm cannot push) but never
        # takes it down: counted here, named at /v1/admin/contracts/broken.
        from datalab.service.deps import contracts

        try:
            broken = len(getattr(contracts(settings()), "broken", {}))
        except Exception:  # the contracts folder itself unreadable: still alive
            broken = -1
        return {"ok": True, "contracts_broken": broken}

    @app.get("/v1/whoami", tags=["meta"], summary="The principal behind the token")
    def whoami(p: auth.Principal = Depends(current_principal)) -> dict[str, Any]:
        return p.to_dict()

    app.include_router(providers.router)
    app.include_router(consumers.router)
    app.include_router(admin.router)
    dsp.install(app)  # site-to-site Dataspace Protocol routes (issue 18)
    return app
