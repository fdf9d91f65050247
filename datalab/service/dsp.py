"""DSP 2025-1 endpoints of a site (``/dsp/...``): what peer sites call.

Every request carries a site token (``Authorization: dlsite.…``) signed by a
registered peer; anything else is answered 401 with a DSP error message and
audited, before the body is read. Errors are DSP error messages with a
reason, never a traceback.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from datalab import catalog as cat
from datalab.config import safe_segment, settings
from datalab.errors import DatalabError, NotFound
from datalab.federation import dsp
from datalab.federation.identity import TokenRefused, site_url, verify_token
from datalab.service.deps import client_of

router = APIRouter(prefix="/dsp", tags=["dsp"])


class DspError(Exception):
    """A refusal answered as a DSP error message of ``kind`` with ``status``."""

    def __init__(self, status: int, kind: str, code: str, reason: str):
        super().__init__(reason)
        self.status, self.kind, self.code, self.reason = status, kind, code, reason


def audit(actor: str, action: str, subject: str, decision: str, detail: dict[str, Any]) -> None:
    s = settings()
    cat.Catalog(s.catalog_url).audit(f"site:{actor}"[:200], action, subject[:300], decision, detail)


def authenticate(request: Request, action: str, kind: str) -> str:
    """The calling peer site's name, or DspError 401 (audited) for a missing/unknown/forged/expired/replayed token."""
    try:
        claims = verify_token(request.headers.get("authorization"))
    except TokenRefused as e:
        audit("unknown", action, request.url.path, "refused",
              {"status": 401, "reason": str(e), "client": client_of(request)})
        raise DspError(401, kind, "401", str(e)) from None
    return str(claims["iss"])


async def body_of(request: Request, kind: str, expect: str, peer: str, action: str) -> dict[str, Any]:
    """The request's DSP message, or DspError 400/413 (audited)."""
    body = await request.body()
    try:
        return dsp.parse(body, expect)
    except ValueError as e:
        status = 413 if "too large" in str(e) else 400
        await run_in_threadpool(audit, peer, action, request.url.path, "refused", {"status": status, "reason": str(e)})
        raise DspError(status, kind, str(status), str(e)) from None


def base_url(request: Request) -> str:
    try:
        return site_url() or str(request.base_url).rstrip("/")
    except DatalabError:
        return str(request.base_url).rstrip("/")


@router.post("/catalog/request", summary="DSP CatalogRequestMessage: the site's catalog for the calling peer")
async def catalog_request(request: Request) -> JSONResponse:
    peer = await run_in_threadpool(authenticate, request, "dsp.catalog", "CatalogError")
    await body_of(request, "CatalogError", "CatalogRequestMessage", peer, "dsp.catalog")
    doc = await run_in_threadpool(dsp.catalog, peer, base_url(request))
    await run_in_threadpool(audit, peer, "dsp.catalog", "catalog", "allowed",
                            {"datasets": len(doc.get("dataset", []))})
    return JSONResponse(doc)


@router.get("/cards/{name}/{version}", summary="The card of a version listed in the catalog")
def card(name: str, version: str, request: Request) -> PlainTextResponse:
    peer = authenticate(request, "dsp.card", "CatalogError")
    s = settings()
    try:
        safe_segment(name, "dataset")
        safe_segment(version, "version")
        doc = dsp.catalog(peer, base_url(request), s)
        if not any(d["@id"] == dsp.urn("dataset", name, version) for d in doc.get("dataset", [])):
            raise NotFound(f"no dataset {name}@{version} in this site's catalog for {peer}")
        text = (s.versions / name / version / "card.md").read_text()
    except (DatalabError, ValueError, OSError) as e:
        audit(peer, "dsp.card", f"{name}@{version}", "refused", {"status": 404, "reason": str(e)})
        raise DspError(404, "CatalogError", "404", str(e)) from None
    return PlainTextResponse(text)


def install(app: Any) -> None:
    """Mount the DSP routes and their error handler on the lab's FastAPI app."""

    @app.exception_handler(DspError)
    async def _dsp_error(request: Request, e: DspError) -> JSONResponse:
        return JSONResponse(dsp.error(e.kind, e.code, e.reason), status_code=e.status)

    app.include_router(router)
