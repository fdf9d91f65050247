"""Routes for member firms: their own contracts, pushes and receipts.

A firm sees only what its tenant owns. Anything else answers 404 with the
same message as something that does not exist, so a firm cannot learn
another firm's contract names or delivery ids by probing.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from datalab.config import Settings, safe_segment, settings
from datalab.contracts.contract import Contract
from datalab.errors import NotFound
from datalab.intake import landing, pacing
from datalab.policy import auth
from datalab.service.deps import ApiError, contracts, need, refuse
from datalab.service.uploads import UploadError, receive_multipart, receive_octets
from datalab.store import catalog as cat

router = APIRouter(prefix="/v1/provider", tags=["providers"])
IDEM_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
DRAIN_AFTER_REFUSAL = 64 << 20  # read at most this much more so the client sees the answer

firm_push = need("firm", "push")
firm_read = need("firm", "push", "receipts")
firm_receipts = need("firm", "receipts", "push")


def _contract_view(c: Contract) -> dict[str, Any]:
    return {"id": c.id, "product": c.product, "name": c.name, "version": c.version, "status": c.status,
            "kind": c.kind, "max_file_bytes": c.max_file_bytes, "policy": c.policy.to_dict()}


def own_contract(request: Request, p: auth.Principal, ref: str, s: Settings) -> Contract:
    """The firm's contract named by id, product or tenant/product; 404 otherwise (audited)."""
    known = contracts(s)
    for c in known.values():
        if c.tenant == p.tenant and ref in (c.id, c.product, f"{c.tenant}/{c.product}"):
            return c
    for path, problems in getattr(known, "broken", {}).items():
        fp = Path(path)
        if fp.parent.name == p.tenant and ref in (fp.stem, f"{fp.parent.name}/{fp.stem}"):
            # Only this firm's own broken contract refuses: it sees why (others' stay unseen).
            raise refuse(request, p.actor, "contract", f"contract:{ref}", 422,
                         f"contract {fp.parent.name}/{fp.name} is invalid, so it takes no pushes until it is fixed: "
                         + "; ".join(problems), s=s)
    raise refuse(request, p.actor, "contract", f"contract:{ref}", 404,
                 "no such contract for your tenant", s=s)


@router.get("/contracts", summary="The calling firm's contracts")
def list_contracts(p: auth.Principal = Depends(firm_read)) -> list[dict[str, Any]]:
    s = settings()
    return [_contract_view(c) for c in sorted(contracts(s).values(), key=lambda c: c.id) if c.tenant == p.tenant]


# Before the contract's own route: its path parameter would take ".../intake" as a contract name.
@router.get("/contracts/{ref:path}/intake",
            summary="Whether a push under the contract would be taken now, or asked to wait (intake pacing)",
            responses={200: {"description": "open: true, or open: false with Retry-After and the reason"}})
def intake(ref: str, request: Request, p: auth.Principal = Depends(firm_push)) -> JSONResponse:
    """The question a client asks before sending a body again after the lab asked it to wait.

    A push refused by the intake's pacing (429) has sent its whole body for
    nothing; pushing again each second sends it again. This answers the
    same rule (``datalab.intake.pacing.must_wait``) for no body at all, so
    a client waits here and sends the body once the answer is open. A
    question is not a refusal: it is answered 200 either way (``open``
    false with Retry-After and the reason) and not audited; the push that
    follows is paced and audited as any other.
    """
    s = settings()
    c = own_contract(request, p, ref, s)
    wait = pacing.must_wait(c.id, s)  # the rule the push meets (``_paced``), nothing else
    if wait is None:
        return JSONResponse({"contract": c.id, "open": True})
    return JSONResponse({"contract": c.id, "open": False, "waiting": wait.waiting, "bound": wait.bound,
                         "retry_after_s": wait.retry_after_s, "reason": wait.message},
                        headers={"Retry-After": str(wait.retry_after_s)})


@router.get("/contracts/{ref:path}", summary="One of the calling firm's contracts (id, product or tenant/product)")
def get_contract(ref: str, request: Request, p: auth.Principal = Depends(firm_read)) -> dict[str, Any]:
    return _contract_view(own_contract(request, p, ref, settings()))


def _request_sha(c: Contract, files: list[Any]) -> str:
    body = json.dumps([c.id, c.version, [(f.name, f.sha256) for f in files]])
    return hashlib.sha256(body.encode()).hexdigest()


def _idem_lookup(s: Settings, principal: str, key: str) -> Any:
    with cat.Catalog(s.catalog_url).begin() as conn:
        return conn.execute(sa.select(auth.idempotency).where(
            auth.idempotency.c.principal == principal, auth.idempotency.c.key == key)).first()


async def _drain(it: Any) -> None:
    got = 0
    try:
        async for chunk in it:
            got += len(chunk)
            if got > DRAIN_AFTER_REFUSAL:
                return
    except ClientDisconnect:
        return


@router.post(
    "/contracts/{ref:path}/deliveries",
    summary="Push one delivery (streamed; multipart/form-data or application/octet-stream with ?name=)",
    status_code=201,
    responses={200: {"description": "a repeat of an earlier push (same bytes or same Idempotency-Key)"},
               409: {"description": "Idempotency-Key reused with other bytes"},
               413: {"description": "a file exceeds the contract's max_file_bytes"},
               415: {"description": "not multipart/form-data or application/octet-stream"}},
)
async def push(
    ref: str,
    request: Request,
    name: str | None = Query(None, max_length=255, description="file name, for an octet-stream body"),
    idempotency_key: str | None = Header(None, description="retry-safe key: same key and bytes, same receipt"),
    correction: bool = Query(False, description="the delivery corrects readings already delivered: its readings "
                             "replace earlier ones with the same entity, time and sensor (else such repeats are excluded)"),
    p: auth.Principal = Depends(firm_push),
) -> JSONResponse:
    s = settings()
    c = await run_in_threadpool(own_contract, request, p, ref, s)
    if idempotency_key is not None and not IDEM_KEY.match(idempotency_key):
        raise await run_in_threadpool(refuse, request, p.actor, "push", c.id, 400,
                                      "Idempotency-Key: use 1-200 characters of A-Z a-z 0-9 . _ : -", None, s)
    if (wait := await run_in_threadpool(_paced, request, p, c, idempotency_key, s)) is not None:
        await _drain(request.stream().__aiter__())
        raise wait
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    staging = s.staging / "http" / safe_segment(p.tenant or "", "tenant") / secrets.token_hex(8)
    staging.mkdir(parents=True, exist_ok=True)
    body = request.stream().__aiter__()
    try:
        try:
            if media == "multipart/form-data":
                files = await receive_multipart(body, ctype, staging, c.max_file_bytes)
            elif media == "application/octet-stream":
                if not name:
                    raise UploadError(400, "an application/octet-stream push needs ?name=<file name>")
                files = await receive_octets(body, name, staging, c.max_file_bytes)
            else:
                raise UploadError(415, f"Content-Type {media or '(none)'!r} is not accepted: send "
                                       "multipart/form-data or application/octet-stream")
        except UploadError as e:
            await _drain(body)
            raise await run_in_threadpool(refuse, request, p.actor, "push", c.id, e.status, str(e), None, s) from None
        except ClientDisconnect:
            await run_in_threadpool(refuse, request, p.actor, "push", c.id, 400,
                                    "the client went away before the body ended; nothing was stored", None, s)
            return JSONResponse({"error": "incomplete body"}, status_code=400)
        req_sha = _request_sha(c, files)
        if idempotency_key:
            # Reserve the key before landing, so two requests racing with one key and
            # different bytes cannot both land: the second sees the first's hash.
            prior = await run_in_threadpool(_idem_reserve, s, p.name, idempotency_key, req_sha)
            if prior is not None:
                if prior.request_sha256 != req_sha:
                    raise await run_in_threadpool(
                        refuse, request, p.actor, "push", c.id, 409,
                        f"Idempotency-Key {idempotency_key!r} was used for other bytes "
                        f"({f'delivery {prior.delivery_id}' if prior.delivery_id else 'a push still landing'}); "
                        "use a new key for a new delivery", None, s)
                if prior.delivery_id:
                    rec = await run_in_threadpool(landing.get_receipt, prior.delivery_id, p.tenant, s)
                    rec.duplicate = True
                    # A replay lands nothing, but it is a request the firm made: audited like a repeat push.
                    await run_in_threadpool(cat.Catalog(s.catalog_url).audit, p.actor, "push", rec.delivery_id,
                                            "replayed", {"contract": c.id, "tenant": c.tenant,
                                                         "idempotency_key": idempotency_key})
                    return JSONResponse(rec.to_dict(), status_code=200, headers={"Idempotent-Replayed": "true"})
                # Same bytes, still pending (a concurrent retry, or a crash before the key was
                # completed): landing them again is safe, the landing zone's content key makes
                # it the same delivery.
        staged = [(f.name, f.path, f.sha256, f.bytes, False) for f in files]
        completed: list[str] = []

        def complete_key(conn: Any, new: landing.Receipt) -> None:
            # the key completes in the receipt's own transaction: both or neither, one commit fewer
            _idem_complete_in(conn, p.name, idempotency_key or "", new.delivery_id)
            completed.append(new.delivery_id)

        rec = await run_in_threadpool(landing.land_staged, c, staged, p.actor, s, correction,
                                      complete_key if idempotency_key else None)
        if idempotency_key and not completed:  # an earlier receipt answered: complete the key with it
            await run_in_threadpool(_idem_complete, s, p.name, idempotency_key, rec.delivery_id)
        return JSONResponse(rec.to_dict(), status_code=200 if rec.duplicate else 201,
                            headers={"Location": f"/v1/provider/receipts/{rec.delivery_id}"})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _paced(request: Request, p: auth.Principal, c: Contract, idempotency_key: str | None, s: Settings) -> ApiError | None:
    """A 429 when the contract's processing is behind (datalab.intake.pacing), decided before the body is stored.

    A push again of one already landed (its Idempotency-Key is known) is
    not paced: it stores nothing new and gets its receipt. Refusals are
    counted and audited as one summary per contract, like the rate limits'
    (a client pushing again every second would otherwise fill the log).
    """
    wait = pacing.must_wait(c.id, s)
    if wait is None or (idempotency_key and _idem_lookup(s, p.name, idempotency_key) is not None):
        return None
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is not None and limiter.count_refusal("waiting", c.id, request.url.path, wait.message):
        limiter.flush(s)
    return ApiError(429, wait.message, {"Retry-After": str(wait.retry_after_s)}, audited=limiter is not None)


def _idem_reserve(s: Settings, principal: str, key: str, req_sha: str) -> Any:
    """Claim ``key`` for these bytes; returns the existing row if it was claimed before."""
    try:
        with cat.Catalog(s.catalog_url).begin() as conn:
            conn.execute(auth.idempotency.insert().values(
                principal=principal, key=key, request_sha256=req_sha, delivery_id="",
                created_at=cat.now_iso()))
        return None
    except sa.exc.IntegrityError:
        return _idem_lookup(s, principal, key)


def _idem_complete(s: Settings, principal: str, key: str, delivery_id: str) -> None:
    with cat.Catalog(s.catalog_url).begin() as conn:
        _idem_complete_in(conn, principal, key, delivery_id)


def _idem_complete_in(conn: Any, principal: str, key: str, delivery_id: str) -> None:
    conn.execute(auth.idempotency.update().where(
        auth.idempotency.c.principal == principal, auth.idempotency.c.key == key,
    ).values(delivery_id=delivery_id))


@router.get("/receipts", summary="The calling firm's receipts")
def list_receipts(
    request: Request,
    status: str | None = Query(None, pattern="^(accepted|rejected)$"),
    contract: str | None = Query(None, max_length=300),
    limit: int = Query(landing.DEFAULT_RECEIPT_LIMIT, ge=1, le=landing.MAX_RECEIPT_LIMIT,
                       description="receipts per page (oldest first)"),
    offset: int = Query(0, ge=0, le=2**62, description="receipts to skip"),
    p: auth.Principal = Depends(firm_receipts),
) -> list[dict[str, Any]]:
    """One page of receipts, oldest first; a full page means there may be more (``offset += limit``)."""
    s = settings()
    cid = own_contract(request, p, contract, s).id if contract else None
    recs = landing.list_receipts(tenant=p.tenant, contract_id=cid, status=status, s=s, limit=limit, offset=offset)
    return [r.to_dict() for r in recs]


@router.get("/receipts/{delivery_id}", summary="One receipt with its reasons")
def get_receipt(delivery_id: str, request: Request, p: auth.Principal = Depends(firm_receipts)) -> dict[str, Any]:
    s = settings()
    try:
        return landing.get_receipt(delivery_id, tenant=p.tenant, s=s).to_dict()
    except NotFound:
        raise refuse(request, p.actor, "receipt", f"delivery:{delivery_id}", 404,
                     "no such delivery for your tenant", s=s) from None
