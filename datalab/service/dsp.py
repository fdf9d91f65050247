"""DSP 2025-1 endpoints of a site (``/dsp/...``): what peer sites call.

Every request carries a site token (``Authorization: dlsite.…``) signed by a
registered peer; anything else is answered 401 with a DSP error message and
audited, before the body is read. Errors are DSP error messages with a
reason, never a traceback.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from datalab.config import safe_segment, settings
from datalab.errors import DatalabError, NotFound, PolicyRefused
from datalab.federation import dsp
from datalab.federation import negotiation as neg
from datalab.federation import transfer as tr
from datalab.federation.identity import TokenRefused, get_peer, site_name, site_url, verify_token
from datalab.service.deps import client_of
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest
from datalab.store.storage import store, version_key

router = APIRouter(prefix="/dsp", tags=["dsp"])


class DspError(Exception):
    """A refusal answered as a DSP error message of ``kind`` with ``status``."""

    def __init__(self, status: int, kind: str, code: str, reason: str):
        super().__init__(reason)
        self.status, self.kind, self.code, self.reason = status, kind, code, reason
        self.ids: dict[str, str] = {}


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
        text = store(s).read_text(version_key(name, version, "card.md"))
    except (DatalabError, ValueError, OSError) as e:
        audit(peer, "dsp.card", f"{name}@{version}", "refused", {"status": 404, "reason": str(e)})
        raise DspError(404, "CatalogError", "404", str(e)) from None
    return PlainTextResponse(text)


def install(app: Any) -> None:
    """Mount the DSP routes and their error handler on the lab's FastAPI app."""

    @app.exception_handler(DspError)
    async def _dsp_error(request: Request, e: DspError) -> JSONResponse:
        return JSONResponse(dsp.error(e.kind, e.code, e.reason, **e.ids), status_code=e.status)

    app.include_router(router)
    from datalab.federation.events import start_loop

    start_loop()  # withdrawal events to peers: scanned and delivered in the background


# -- contract negotiation (provider side) -----------------------------------------

NEG_ERR = "ContractNegotiationError"


def _neg_error(status: int, reason: str, n: neg.Negotiation | None = None, msg: dict[str, Any] | None = None) -> DspError:
    e = DspError(status, NEG_ERR, str(status), reason)
    e.ids = {"providerPid": (n.provider_pid if n else str((msg or {}).get("providerPid") or "")),
             "consumerPid": (n.consumer_pid if n else str((msg or {}).get("consumerPid") or ""))}
    return e


def _ids_ok(msg: dict[str, Any], n: neg.Negotiation) -> None:
    if msg.get("consumerPid") != n.consumer_pid or msg.get("providerPid") != n.provider_pid:
        raise _neg_error(400, "providerPid/consumerPid do not match the negotiation", n, msg)


def _send_decision(pid: str) -> None:
    """After answering the request: decide, record, then send agreement or termination to the consumer."""
    s = settings()
    n = neg.get(pid, s)
    me = site_name(s)
    try:
        m = neg.decide(n.dataset, n.version, n.purpose, n.peer, s)
    except (PolicyRefused, NotFound) as e:
        rule = getattr(e, "rule", "not-found")
        n = neg.advance(pid, "ContractNegotiationTerminationMessage", s, rule=rule, reason=str(e))
        audit(n.peer, "dsp.negotiation", n.consumer_pid, "terminated",
              {"providerPid": pid, "rule": rule, "reason": str(e), "dataset": f"{n.dataset}@{n.version}"})
        msg = {"@context": dsp.CONTEXT, "@type": "ContractNegotiationTerminationMessage", "providerPid": pid,
               "consumerPid": n.consumer_pid, "code": rule, "reason": [str(e)]}
        _callback(n, "termination", msg)
        return
    agreement = neg.agreement_for(n, me, m)
    n = neg.advance(pid, "ContractAgreementMessage", s, agreement=agreement)
    audit(n.peer, "dsp.negotiation", n.consumer_pid, "agreed",
          {"providerPid": pid, "agreement": agreement["@id"], "purpose": n.purpose, "dataset": f"{n.dataset}@{m.version}"})
    msg = {"@context": dsp.CONTEXT, "@type": "ContractAgreementMessage", "providerPid": pid,
           "consumerPid": n.consumer_pid, "agreement": agreement}
    if not _callback(n, "agreement", msg):
        neg.advance(pid, "ContractNegotiationTerminationMessage", s, rule="unreachable",
                    reason="the consumer's callback did not accept the agreement")


def _callback(n: neg.Negotiation, what: str, msg: dict[str, Any]) -> bool:
    """Send ``msg`` to the consumer's callback address; audited either way."""
    from datalab.federation.client import post_url

    try:
        post_url(n.peer, f"{n.callback}/negotiations/{n.consumer_pid}/{what}", msg)
    except DatalabError as e:
        audit(n.peer, "dsp.negotiation", n.consumer_pid, "undelivered", {"message": msg["@type"], "reason": str(e)})
        return False
    return True


@router.post("/negotiations/request", status_code=201, summary="DSP ContractRequestMessage (initial)")
async def negotiation_request(request: Request, background: BackgroundTasks) -> JSONResponse:
    peer = await run_in_threadpool(authenticate, request, "dsp.negotiation", NEG_ERR)
    msg = await body_of(request, NEG_ERR, "ContractRequestMessage", peer, "dsp.negotiation")

    def start() -> neg.Negotiation:
        try:
            consumer_pid = str(msg["consumerPid"])
            callback = str(msg["callbackAddress"]).rstrip("/")
            offer = msg["offer"]
            dataset, version = neg.parse_target(str(offer.get("target", "")))
            if "providerPid" in msg:
                raise ValueError("providerPid given: a counter-request needs /negotiations/{providerPid}/request")
            rule = next((c for p in offer.get("permission") or [] for c in p.get("constraint") or []
                         if c.get("leftOperand") == "purpose"), None)
            purpose = str(rule["rightOperand"]) if rule and rule.get("operator") == "eq" else None
            if not purpose:
                raise ValueError("the offer must state the purpose: permission constraint purpose eq P")
            peer_url = get_peer(peer).url
            if not callback.startswith(peer_url):
                raise ValueError(f"callbackAddress must lie under the registered URL of {peer} ({peer_url})")
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            audit(peer, "dsp.negotiation", str(msg.get("consumerPid", "?")), "refused", {"status": 400, "reason": str(e)})
            raise _neg_error(400, f"bad ContractRequestMessage: {e}", msg=msg) from None
        n = neg.create("provider", peer, consumer_pid, dataset, version, purpose, callback=callback)
        audit(peer, "dsp.negotiation", consumer_pid, "requested",
              {"providerPid": n.pid, "dataset": f"{dataset}@{version}", "purpose": purpose})
        return n

    n = await run_in_threadpool(start)
    background.add_task(_send_decision, n.pid)
    return JSONResponse(n.message(), status_code=201)


@router.get("/negotiations/{pid}", summary="DSP ContractNegotiation: the provider's state")
def negotiation_get(pid: str, request: Request) -> JSONResponse:
    peer = authenticate(request, "dsp.negotiation", NEG_ERR)
    try:
        return JSONResponse(neg.get(pid, peer=peer).message())
    except NotFound as e:
        raise _neg_error(404, str(e)) from None


async def _incoming(request: Request, pid: str, expect: str, message: str, kind: str = "provider",
                    expect_state: str | None = None, **extra: Any) -> tuple[str, neg.Negotiation, dict[str, Any]]:
    """Authenticate, parse, and move negotiation ``pid`` by ``message``; DSP errors (nothing changed) otherwise."""
    peer = await run_in_threadpool(authenticate, request, "dsp.negotiation", NEG_ERR)
    msg = await body_of(request, NEG_ERR, expect, peer, "dsp.negotiation")

    def move() -> neg.Negotiation:
        try:
            n = neg.get(pid, peer=peer)
            if n.role != kind:
                raise NotFound(f"no negotiation {pid[:80]!r} with {peer}")
        except NotFound as e:
            audit(peer, "dsp.negotiation", pid, "refused", {"status": 404, "reason": str(e), "message": expect})
            raise _neg_error(404, str(e), msg=msg) from None
        if kind == "consumer" and n.peer_pid is None:
            object.__setattr__(n, "peer_pid", msg.get("providerPid"))
        _ids_ok(msg, n)
        label = message.removeprefix("Event:")
        try:
            extras = {k: (v(msg) if callable(v) else v) for k, v in extra.items()}
            n2 = neg.advance(pid, message, peer_pid=msg.get("providerPid") if kind == "consumer" else None,
                             expect_state=expect_state, **extras)
        except neg.IllegalTransition as e:
            audit(peer, "dsp.negotiation", n.consumer_pid, "refused", {"status": 409, "reason": str(e), "message": label})
            raise _neg_error(409, str(e), n) from None
        audit(peer, "dsp.negotiation", n.consumer_pid, n2.state.lower(), {"message": label, "pid": pid})
        return n2

    n = await run_in_threadpool(move)
    return peer, n, msg


def _send_finalized(pid: str) -> None:
    s = settings()
    n = neg.advance(pid, "Event:FINALIZED", s)
    audit(n.peer, "dsp.negotiation", n.consumer_pid, "finalized", {"providerPid": pid})
    _callback(n, "events", {"@context": dsp.CONTEXT, "@type": "ContractNegotiationEventMessage",
                            "providerPid": pid, "consumerPid": n.consumer_pid, "eventType": "FINALIZED"})


@router.post("/negotiations/{pid}/agreement/verification", summary="DSP ContractAgreementVerificationMessage")
async def negotiation_verification(pid: str, request: Request, background: BackgroundTasks) -> JSONResponse:
    _, n, _ = await _incoming(request, pid, "ContractAgreementVerificationMessage", "ContractAgreementVerificationMessage")
    background.add_task(_send_finalized, n.pid)
    return JSONResponse({}, status_code=200)


@router.post("/negotiations/{pid}/termination", summary="DSP ContractNegotiationTerminationMessage from the consumer")
async def negotiation_termination(pid: str, request: Request) -> JSONResponse:
    await _incoming(request, pid, "ContractNegotiationTerminationMessage", "ContractNegotiationTerminationMessage",
                    rule=lambda m: str(m.get("code") or "consumer"),
                    reason=lambda m: "; ".join(map(str, m.get("reason") or ["terminated by the consumer"])))
    return JSONResponse({}, status_code=200)


# -- contract negotiation (consumer side: the callbacks a provider calls) ------------


def _send_verification(pid: str) -> None:
    """The consumer verifies the agreement it received: record VERIFIED, then tell the provider."""
    from datalab.federation.client import post_url

    s = settings()
    n = neg.advance(pid, "ContractAgreementVerificationMessage", s)
    msg = {"@context": dsp.CONTEXT, "@type": "ContractAgreementVerificationMessage",
           "providerPid": n.provider_pid, "consumerPid": n.consumer_pid}
    try:
        post_url(n.peer, f"{get_peer(n.peer).url}/dsp/negotiations/{n.provider_pid}/agreement/verification", msg)
        audit(n.peer, "dsp.negotiation", n.consumer_pid, "verified", {"providerPid": n.provider_pid})
    except DatalabError as e:
        neg.advance(pid, "ContractNegotiationTerminationMessage", s, rule="unreachable", reason=str(e))
        audit(n.peer, "dsp.negotiation", n.consumer_pid, "undelivered", {"message": msg["@type"], "reason": str(e)})


def _check_agreement(m: dict[str, Any]) -> dict[str, Any]:
    a = m.get("agreement")
    if not isinstance(a, dict) or a.get("@type") != "Agreement" or not a.get("@id"):
        raise _neg_error(400, "ContractAgreementMessage without an Agreement", msg=m)
    return a


@router.post("/callback/negotiations/{pid}/agreement", summary="DSP ContractAgreementMessage (to the consumer)")
async def callback_agreement(pid: str, request: Request, background: BackgroundTasks) -> JSONResponse:
    _, n, _ = await _incoming(request, pid, "ContractAgreementMessage", "ContractAgreementMessage", kind="consumer",
                              agreement=_check_agreement)
    background.add_task(_send_verification, n.pid)
    return JSONResponse({}, status_code=200)


@router.post("/callback/negotiations/{pid}/events", summary="DSP ContractNegotiationEventMessage (to the consumer)")
async def callback_event(pid: str, request: Request) -> JSONResponse:
    body = await request.body()
    try:
        event = str(json.loads(body).get("eventType"))
    except (ValueError, AttributeError):
        event = "?"
    await _incoming(request, pid, "ContractNegotiationEventMessage", f"Event:{event}", kind="consumer")
    return JSONResponse({}, status_code=200)


@router.post("/callback/negotiations/{pid}/termination", summary="DSP ContractNegotiationTerminationMessage (to the consumer)")
async def callback_termination(pid: str, request: Request) -> JSONResponse:
    await _incoming(request, pid, "ContractNegotiationTerminationMessage", "ContractNegotiationTerminationMessage",
                    kind="consumer", rule=lambda m: str(m.get("code") or "provider"),
                    reason=lambda m: "; ".join(map(str, m.get("reason") or ["terminated by the provider"])))
    return JSONResponse({}, status_code=200)


# -- transfer process (provider side) -----------------------------------------------

TR_ERR = "TransferError"


def _tr_error(status: int, reason: str, msg: dict[str, Any] | None = None, t: tr.Transfer | None = None) -> DspError:
    e = DspError(status, TR_ERR, str(status), reason)
    e.ids = {"providerPid": t.provider_pid if t else str((msg or {}).get("providerPid") or ""),
             "consumerPid": t.consumer_pid if t else str((msg or {}).get("consumerPid") or "")}
    return e


def _send_start(pid: str, base: str) -> None:
    from datalab.federation.client import post_url

    s = settings()
    t, address = tr.start(tr.get(pid, s), base, s)
    audit(t.peer, "dsp.transfer", t.consumer_pid, "started",
          {"providerPid": pid, "agreement": t.agreement_id, "expires": t.expires})
    msg = {"@context": dsp.CONTEXT, "@type": "TransferStartMessage", "providerPid": pid,
           "consumerPid": t.consumer_pid, "dataAddress": address}
    try:
        post_url(t.peer, f"{t.callback}/transfers/{t.consumer_pid}/start", msg)
    except DatalabError as e:
        tr.advance(pid, "TERMINATED", s, reason=f"consumer unreachable: {e}")
        audit(t.peer, "dsp.transfer", t.consumer_pid, "undelivered", {"message": msg["@type"], "reason": str(e)})


def _agreed(peer: str, agreement_id: str) -> tuple[neg.Negotiation, Manifest]:
    """The provider's finalized negotiation behind ``agreement_id`` with ``peer``, re-decided now."""
    try:
        n = neg.by_agreement(agreement_id)
    except NotFound as e:
        raise _tr_error(404, str(e)) from None
    if n.role != "provider" or n.peer != peer:
        raise _tr_error(404, f"no agreement {agreement_id[:80]!r} with {peer}")
    if n.state != "FINALIZED":
        raise _tr_error(409, f"agreement {agreement_id} is {n.state}, not FINALIZED")
    try:
        m = neg.decide(n.dataset, n.version, n.purpose, peer)
    except (PolicyRefused, NotFound) as e:
        raise _tr_error(403, f"{e}") from None
    return n, m


@router.post("/transfers/request", status_code=201, summary="DSP TransferRequestMessage (HTTP pull)")
async def transfer_request(request: Request, background: BackgroundTasks) -> JSONResponse:
    peer = await run_in_threadpool(authenticate, request, "dsp.transfer", TR_ERR)
    msg = await body_of(request, TR_ERR, "TransferRequestMessage", peer, "dsp.transfer")

    def begin() -> tr.Transfer:
        try:
            agreement_id, consumer_pid = str(msg["agreementId"]), str(msg["consumerPid"])
            callback = str(msg["callbackAddress"]).rstrip("/")
            if msg.get("format") != "HttpData-PULL":
                raise ValueError(f"format {str(msg.get('format'))[:40]!r}: this site offers HttpData-PULL only")
            if not callback.startswith(get_peer(peer).url):
                raise ValueError(f"callbackAddress must lie under the registered URL of {peer}")
        except (KeyError, ValueError) as e:
            audit(peer, "dsp.transfer", str(msg.get("consumerPid", "?")), "refused", {"status": 400, "reason": str(e)})
            raise _tr_error(400, f"bad TransferRequestMessage: {e}", msg) from None
        try:
            n, m = _agreed(peer, agreement_id)
        except DspError as e:
            audit(peer, "dsp.transfer", consumer_pid, "refused", {"status": e.status, "reason": e.reason,
                                                                  "agreement": agreement_id})
            e.ids = {"providerPid": "", "consumerPid": consumer_pid}
            raise
        t = tr.create("provider", peer, consumer_pid, agreement_id, callback)
        audit(peer, "dsp.transfer", consumer_pid, "requested",
              {"providerPid": t.pid, "agreement": agreement_id, "negotiation": n.consumer_pid,
               "dataset": f"{n.dataset}@{m.version}"})
        return t

    t = await run_in_threadpool(begin)
    background.add_task(_send_start, t.pid, base_url(request))
    return JSONResponse(t.message(), status_code=201)


@router.get("/transfers/{pid}", summary="DSP TransferProcess: the provider's state")
def transfer_get(pid: str, request: Request) -> JSONResponse:
    peer = authenticate(request, "dsp.transfer", TR_ERR)
    try:
        return JSONResponse(tr.get(pid, peer=peer).message())
    except NotFound as e:
        raise _tr_error(404, str(e)) from None


async def _transfer_msg(request: Request, pid: str, expect: str, state: str, kind: str) -> tr.Transfer:
    peer = await run_in_threadpool(authenticate, request, "dsp.transfer", TR_ERR)
    msg = await body_of(request, TR_ERR, expect, peer, "dsp.transfer")

    def move() -> tr.Transfer:
        try:
            t = tr.get(pid, peer=peer)
            if t.role != kind:
                raise NotFound(f"no transfer process {pid[:80]!r} with {peer}")
        except NotFound as e:
            raise _tr_error(404, str(e), msg) from None
        if msg.get("consumerPid") != t.consumer_pid or (kind == "provider" and msg.get("providerPid") != t.pid):
            raise _tr_error(400, "providerPid/consumerPid do not match the transfer", msg, t)
        extra: dict[str, Any] = {}
        if expect == "TransferStartMessage":
            extra = {"address": msg.get("dataAddress") or {}, "peer_pid": msg.get("providerPid")}
        elif "reason" in msg:
            extra = {"reason": "; ".join(map(str, msg.get("reason") or []))}
        try:
            t2 = tr.advance(pid, state, **extra)
        except tr.TransferRefused as e:
            audit(peer, "dsp.transfer", t.consumer_pid, "refused", {"status": 409, "reason": str(e), "message": expect})
            raise _tr_error(409, str(e), msg, t) from None
        audit(peer, "dsp.transfer", t.consumer_pid, state.lower(), {"message": expect, "pid": pid})
        return t2

    return await run_in_threadpool(move)


@router.post("/transfers/{pid}/completion", summary="DSP TransferCompletionMessage: the consumer confirms")
async def transfer_completion(pid: str, request: Request) -> JSONResponse:
    await _transfer_msg(request, pid, "TransferCompletionMessage", "COMPLETED", "provider")
    return JSONResponse({})


@router.post("/transfers/{pid}/termination", summary="DSP TransferTerminationMessage from the consumer")
async def transfer_termination(pid: str, request: Request) -> JSONResponse:
    await _transfer_msg(request, pid, "TransferTerminationMessage", "TERMINATED", "provider")
    return JSONResponse({})


@router.post("/callback/transfers/{pid}/start", summary="DSP TransferStartMessage (to the consumer)")
async def callback_transfer_start(pid: str, request: Request) -> JSONResponse:
    await _transfer_msg(request, pid, "TransferStartMessage", "STARTED", "consumer")
    return JSONResponse({})


@router.post("/callback/transfers/{pid}/termination", summary="DSP TransferTerminationMessage (to the consumer)")
async def callback_transfer_termination(pid: str, request: Request) -> JSONResponse:
    await _transfer_msg(request, pid, "TransferTerminationMessage", "TERMINATED", "consumer")
    return JSONResponse({})


# -- the data plane: what a data address points at -------------------------------------


def _data(pid: str, request: Request) -> tuple[tr.Transfer, Manifest]:
    from datalab.store.manifests import read_manifest

    try:
        t = tr.data_transfer(pid, request.headers.get("authorization"))
        n = neg.by_agreement(t.agreement_id)
        m = read_manifest(n.dataset, n.version)
        if m.status != "active":
            raise tr.TransferRefused(f"{n.dataset}@{n.version} is {m.status}")
    except (tr.TransferRefused, NotFound) as e:
        audit("unknown", "dsp.data", pid[:100], "refused", {"status": 403, "reason": str(e), "client": client_of(request)})
        raise DspError(403, TR_ERR, "403", str(e)) from None
    return t, m


@router.get("/data/{pid}/manifest", summary="Files of the agreed version (sha256, bytes) behind a data address")
def data_manifest(pid: str, request: Request) -> JSONResponse:
    t, m = _data(pid, request)
    keep = ("dataset", "version", "title", "description", "rows", "schema", "policy", "snapshot_id", "created_at")
    full = m.to_dict()
    out = {k: full.get(k) for k in keep}
    out["dataset"], out["version"] = neg.by_agreement(t.agreement_id).dataset, m.version
    out["files"] = [{"sha256": f.sha256, "bytes": f.bytes, "rows": f.rows} for f in m.files]
    audit(t.peer, "dsp.data", t.consumer_pid, "manifest", {"providerPid": pid, "files": len(m.files)})
    return JSONResponse(out)


@router.get("/data/{pid}/card", summary="The card of the agreed version")
def data_card(pid: str, request: Request) -> PlainTextResponse:
    _, m = _data(pid, request)
    try:
        return PlainTextResponse(store(settings()).read_text(version_key(m.dataset, m.version, "card.md")))
    except FileNotFoundError:
        return PlainTextResponse("")


@router.get("/data/{pid}/files/{index}", summary="One file of the agreed version (Range supported)")
def data_file(pid: str, index: int, request: Request) -> StreamingResponse:
    t, m = _data(pid, request)
    if not 0 <= index < len(m.files):
        raise DspError(404, TR_ERR, "404", f"no file {index} (the version has {len(m.files)})")
    files = store(settings())
    key = m.files[index].path  # a key in the lab's store (checked there: no '..')
    size = files.size(key)
    start = 0
    rng = request.headers.get("range", "")
    if rng:
        try:
            unit, _, spec = rng.partition("=")
            first = spec.split("-")[0]
            if unit.strip() != "bytes" or "," in spec:
                raise ValueError
            start = int(first)
            if not 0 <= start < size:
                raise ValueError
        except ValueError:
            raise DspError(416, TR_ERR, "416", f"unsatisfiable range {rng[:40]!r} (file has {size} bytes)") from None
    rate = settings().dsp_rate_limit  # bytes/s per stream; 0: unlimited

    def body() -> Any:
        chunk = 1 << 20 if not rate else max(1024, rate // 10)
        with files.open_input(key) as f:  # a local file or ranged reads of an object
            f.seek(start)
            while b := f.read(chunk):
                yield b
                if rate:
                    time.sleep(len(b) / rate)

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(size - start)}
    if rng:
        headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    audit(t.peer, "dsp.data", t.consumer_pid, "file", {"providerPid": pid, "index": index, "from": start})
    return StreamingResponse(body(), status_code=206 if rng else 200, headers=headers,
                             media_type="application/vnd.apache.parquet")


# -- compute-to-data (a lab extension beside DSP: the data stays, an aggregate leaves) ---------


@router.post("/query", summary="Compute-to-data: a declared aggregation of a version, groups under k suppressed")
async def query(request: Request) -> JSONResponse:
    from datalab.federation import query as cq

    peer = await run_in_threadpool(authenticate, request, "dsp.query", "CatalogError")
    body = await request.body()

    def answer() -> dict[str, Any]:
        try:
            if len(body) > dsp.MAX_MESSAGE_BYTES:
                raise ValueError(f"query too large: {len(body):,} bytes (limit {dsp.MAX_MESSAGE_BYTES:,})")
            req = json.loads(body or b"null")
            if not isinstance(req, dict):
                raise ValueError("a query is a JSON object")
            dataset, version, purpose = str(req["dataset"]), str(req["version"]), str(req["purpose"])
            q = cq.parse(req.get("group_by") or [], req.get("aggs") or [])
        except (ValueError, KeyError, cq.QueryRefused) as e:
            audit(peer, "dsp.query", "query", "refused", {"status": 400, "reason": str(e)})
            raise DspError(400, "QueryError", "400", f"bad query: {e}") from None
        subject = f"{dataset}@{version}"
        try:
            m = neg.decide(dataset, version, purpose, peer, data_moves=False)
            res = cq.run(m, q)
        except (PolicyRefused, NotFound, cq.QueryRefused) as e:
            status = 400 if isinstance(e, cq.QueryRefused) else 403 if isinstance(e, PolicyRefused) else 404
            audit(peer, "dsp.query", subject, "refused", {"status": status, "reason": str(e), "purpose": purpose,
                                                          "rule": getattr(e, "rule", "query"), **q.to_dict()})
            raise DspError(status, "QueryError", str(status), str(e)) from None
        audit(peer, "dsp.query", subject, "answered", {
            "purpose": purpose, **q.to_dict(), "k": res["k"], "groups": len(res["groups"]),
            "suppressed_groups": res["suppressed_groups"], "rows_scanned": res["rows_scanned"],
            "result_sha256": res["result_sha256"]})
        return {**res, "site": site_name()}

    return JSONResponse(await run_in_threadpool(answer))


# -- withdrawal events (provider -> peers holding a replica) --------------------------


@router.post("/events/withdrawal", summary="A signed withdrawal event: delete the replica, answer with the proof")
async def withdrawal_event(request: Request) -> JSONResponse:
    from datalab.federation import events

    peer = await run_in_threadpool(authenticate, request, "dsp.event", "CatalogError")
    body = await request.body()

    def apply() -> dict[str, Any]:
        try:
            if len(body) > dsp.MAX_MESSAGE_BYTES:
                raise ValueError("event too large")
            event = json.loads(body)
            if not isinstance(event, dict) or event.get("@type") != "datalab:WithdrawalEvent":
                raise ValueError("not a datalab:WithdrawalEvent")
            return events.apply_withdrawal(event, peer)
        except (ValueError, KeyError, DatalabError) as e:
            audit(peer, "dsp.event", "withdrawal", "refused", {"status": 400, "reason": str(e)})
            raise DspError(400, "EventError", "400", str(e)) from None

    return JSONResponse(await run_in_threadpool(apply))
