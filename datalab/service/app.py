"""The FastAPI application of the lab service."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from datalab import __version__ as _version
from datalab import auth
from datalab.config import settings
from datalab.service import admin, consumers, dsp, providers
from datalab.service.deps import ApiError, current_principal, refuse

MAX_HEADER_BYTES = 32 << 10
MAX_HEADERS = 200
DESCRIPTION = """The federated data lab over HTTP.

* **providers** (member firms): their own contracts, pushes and receipts;
* **consumers** (ML teams): datasets and versions their declared purpose may reach from their site;
* **admin**: principals, tokens, audit log, runs and publishes.

Authenticate with `Authorization: Bearer dl_<id>_<secret>` (see `datalab token create`).
Errors are JSON `{"error": "..."}`; what another tenant owns answers 404.
"""


def create_app() -> FastAPI:
    """Build the application; the lab is whatever ``DATALAB_HOME`` etc. say."""
    app = FastAPI(title="datalab", version=_version, description=DESCRIPTION)
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
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/healthz", tags=["meta"], summary="Liveness (no authentication)")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/whoami", tags=["meta"], summary="The principal behind the token")
    def whoami(p: auth.Principal = Depends(current_principal)) -> dict[str, Any]:
        return p.to_dict()

    app.include_router(providers.router)
    app.include_router(consumers.router)
    app.include_router(admin.router)
    dsp.install(app)  # site-to-site Dataspace Protocol routes (issue 18)
    return app
