"""Calling peer sites: signed requests and the federated catalog.

Every call gets a fresh token (one nonce per request), so a retry is a new
request, never a replay the peer would refuse.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from datalab.config import Settings, settings
from datalab.errors import DatalabError
from datalab.federation import dsp
from datalab.federation.identity import Peer, issue_token, list_peers

if TYPE_CHECKING:
    from datalab.store.manifest import Manifest


class PeerError(DatalabError):
    """A peer that is down, slow, or answered with a DSP error."""


def post_url(peer_name: str, url: str, msg: dict[str, Any], timeout: float = 10.0,
             s: Settings | None = None) -> dict[str, Any]:
    """A signed DSP POST to an address a peer gave (its callback), checked to lie under its registered URL."""
    from datalab.federation.identity import get_peer

    peer = get_peer(peer_name, s)
    if not url.startswith(peer.url + "/"):
        raise PeerError(f"address {url[:100]!r} is not under the registered URL of {peer_name}")
    return call(peer, "POST", url[len(peer.url):], msg, timeout, s)


def call(peer: Peer, method: str, path: str, msg: dict[str, Any] | None = None, timeout: float = 10.0,
         s: Settings | None = None) -> dict[str, Any]:
    """One signed DSP request to ``peer``; returns its JSON answer or raises PeerError with the reason."""
    headers = {"Authorization": issue_token(peer.name, s)}
    if msg is not None:
        try:
            dsp.strict_check(msg)
        except ValueError as e:
            raise PeerError(f"not sent to {peer.name}: {e}") from None
    try:
        r = httpx.request(method, peer.url + path, json=msg, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise PeerError(f"peer {peer.name} ({peer.url}) did not answer within {timeout:g} s") from None
    except httpx.HTTPError as e:
        raise PeerError(f"peer {peer.name} ({peer.url}) is unreachable: {e.__class__.__name__}") from None
    if r.status_code < 400 and not r.content:
        return {}
    try:
        doc = r.json()
    except ValueError:
        raise PeerError(f"peer {peer.name} answered {r.status_code} without JSON") from None
    if r.status_code >= 400:
        reason = "; ".join(doc.get("reason") or [doc.get("error", "")]) if isinstance(doc, dict) else str(doc)
        raise PeerError(f"peer {peer.name} refused ({r.status_code}): {reason}")
    if isinstance(doc, dict):
        try:
            dsp.strict_check(doc)
        except ValueError as e:
            raise PeerError(f"peer {peer.name} answered a malformed message: {e}") from None
    return doc


def federated_catalog(purpose: str | None = None, timeout: float = 5.0,
                      s: Settings | None = None, peers: bool = True) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Local and every peer's catalog entries, asked in parallel; (rows, {peer: why it is missing}).

    A purpose filters each offer with the same purpose rule as a pull
    (``policy.purpose_allowed``); a down or slow peer is reported, never fatal.
    """
    from datalab.contracts.policy import purpose_allowed
    from datalab.federation.identity import site_name, site_url

    s = s or settings()
    peer_list = list_peers(s) if peers else []
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}

    def ask(p: Peer) -> dict[str, Any]:
        return call(p, "POST", "/dsp/catalog/request",
                    {"@context": dsp.CONTEXT, "@type": "CatalogRequestMessage", "filter": []}, timeout, s)

    docs: list[tuple[str, dict[str, Any]]] = [(site_name(s), dsp.catalog(None, site_url(s), s))]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(peer_list)))) as ex:
        futs = {p.name: ex.submit(ask, p) for p in peer_list}
        for name, f in futs.items():
            try:
                docs.append((name, f.result()))
            except DatalabError as e:
                failed[name] = str(e)
    for site, doc in docs:
        for d in doc.get("dataset", []):
            cons = {c["leftOperand"]: c["rightOperand"] for c in d["hasPolicy"][0]["permission"][0].get("constraint", [])}
            prohibited = [c["rightOperand"] for pr in d["hasPolicy"][0].get("prohibition", [])
                          for c in pr.get("constraint", []) if c["leftOperand"] == "purpose"]
            if purpose and not purpose_allowed(purpose, list(cons.get("purpose", [])),
                                               [x for p in prohibited for x in p])[0]:
                continue
            rows.append({"site": site, "dataset": d.get("https://w3id.org/datalab/dataset"), "version": d.get("version"),
                         "rows": d.get("https://w3id.org/datalab/rows"), "title": d.get("title"),
                         "policy": d.get("https://w3id.org/datalab/policyText", ""), "offer": d["hasPolicy"][0]["@id"]})
    return rows, failed


def negotiate(site: str, ref: str, purpose: str, timeout: float = 30.0,
              s: Settings | None = None) -> Any:
    """Negotiate ``ref`` (DATASET@VERSION) at ``site`` for ``purpose``; the final local Negotiation.

    The consumer records REQUESTED first, then sends the ContractRequestMessage;
    the provider answers through this site's callbacks (agreement, then
    FINALIZED, or a termination), which this site's service records. This
    waits for a final state.
    """
    import time
    import uuid

    from datalab.federation import negotiation as neg
    from datalab.federation.identity import get_peer, site_url
    from datalab.store import catalog as cat

    s = s or settings()
    dataset, _, version = ref.partition("@")
    if not dataset or not version:
        raise DatalabError(f"name the version to negotiate: DATASET@VERSION, got {ref!r}")
    peer = get_peer(site, s)
    me = site_url(s)
    if not me:
        raise DatalabError("this site has no base URL for the provider's callbacks (DATALAB_SITE_URL or sites.yaml url)")
    consumer_pid = f"urn:uuid:{uuid.uuid4()}"
    n = neg.create("consumer", site, consumer_pid, dataset, version.removeprefix("v"), purpose, callback=me + "/dsp/callback",
                   pid=consumer_pid, s=s)
    audit = cat.Catalog(s.catalog_url).audit
    audit("cli", "dsp.negotiation", consumer_pid, "requested", {"site": site, "dataset": f"{dataset}@{n.version}",
                                                                 "purpose": purpose})
    msg = {"@context": dsp.CONTEXT, "@type": "ContractRequestMessage", "consumerPid": consumer_pid,
           "offer": {"@id": dsp.urn("offer", dataset, n.version), "@type": "Offer",
                     "target": dsp.urn("dataset", dataset, n.version),
                     "permission": [{"action": "use", "constraint": [
                         {"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose}]}]},
           "callbackAddress": me + "/dsp/callback"}
    try:
        ack = call(peer, "POST", "/dsp/negotiations/request", msg, s=s)
    except PeerError as e:
        n = neg.advance(consumer_pid, "ContractNegotiationTerminationMessage", s, rule="provider", reason=str(e))
        audit("cli", "dsp.negotiation", consumer_pid, "terminated", {"reason": str(e)})
        return n
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = neg.get(consumer_pid, s)
        if n.state in neg.TERMINAL:
            return n
        time.sleep(0.1)
    raise PeerError(f"negotiation {consumer_pid} with {site} is still {n.state} after {timeout:g} s "
                    f"(provider id {ack.get('providerPid')}); `datalab negotiations` shows it later")


def transfer(agreement_id: str, timeout: float = 30.0, s: Settings | None = None,
             progress: Any = None) -> Manifest:
    """Run the DSP transfer (HTTP pull) of a finalized agreement and register the replica; its manifest.

    Rerunning after an interruption (this process or the provider killed)
    asks for a new data address and resumes the files already partly
    downloaded; nothing is registered until every file verified.
    """
    import time
    import uuid

    import httpx

    from datalab.federation import negotiation as neg
    from datalab.federation import transfer as tr
    from datalab.federation.identity import get_peer, site_url
    from datalab.store import catalog as cat

    s = s or settings()
    n = neg.by_agreement(agreement_id, s)
    if n.role != "consumer" or n.state != "FINALIZED":
        raise DatalabError(f"agreement {agreement_id} is {n.state} at this site ({n.role}); a transfer needs a "
                           "finalized agreement this site negotiated as consumer")
    peer = get_peer(n.peer, s)
    consumer_pid = f"urn:uuid:{uuid.uuid4()}"
    callback = site_url(s) + "/dsp/callback"
    t = tr.create("consumer", n.peer, consumer_pid, agreement_id, callback, pid=consumer_pid, s=s)
    audit = cat.Catalog(s.catalog_url).audit
    audit("cli", "dsp.transfer", consumer_pid, "requested", {"site": n.peer, "agreement": agreement_id})
    msg = {"@context": dsp.CONTEXT, "@type": "TransferRequestMessage", "consumerPid": consumer_pid,
           "agreementId": agreement_id, "format": "HttpData-PULL", "callbackAddress": callback}
    try:
        call(peer, "POST", "/dsp/transfers/request", msg, s=s)
    except PeerError as e:
        tr.advance(consumer_pid, "TERMINATED", s, reason=str(e))
        audit("cli", "dsp.transfer", consumer_pid, "refused", {"reason": str(e)})
        raise
    deadline = time.monotonic() + timeout
    while (t := tr.get(consumer_pid, s)).state == "REQUESTED" and time.monotonic() < deadline:
        time.sleep(0.05)
    if t.state != "STARTED":
        raise PeerError(f"transfer {consumer_pid} is {t.state}: {t.reason or 'no data address from ' + n.peer}")
    try:
        m = tr.fetch_and_register(t, n.peer, n.purpose, (n.dataset, n.version), s, progress)
    except (httpx.HTTPError, OSError) as e:
        audit("cli", "dsp.transfer", consumer_pid, "interrupted", {"reason": f"{e.__class__.__name__}: {e}"})
        raise PeerError(f"transfer from {n.peer} interrupted ({e.__class__.__name__}); run it again to resume") from None
    except DatalabError as e:
        audit("cli", "dsp.transfer", consumer_pid, "failed", {"reason": str(e)})
        raise
    tr.advance(consumer_pid, "COMPLETED", s)
    audit("cli", "dsp.transfer", consumer_pid, "completed", {"agreement": agreement_id, "files": len(m.files)})
    try:
        call(peer, "POST", f"/dsp/transfers/{t.provider_pid}/completion",
             {"@context": dsp.CONTEXT, "@type": "TransferCompletionMessage", "providerPid": t.provider_pid,
              "consumerPid": consumer_pid}, s=s)
    except PeerError as e:  # the replica is complete here; the provider's record just lacks the confirmation
        audit("cli", "dsp.transfer", consumer_pid, "unconfirmed", {"reason": str(e)})
    return m


class ReplicationRefused(DatalabError):
    """The provider terminated the negotiation of a replication; ``rule`` is the rule it named."""

    def __init__(self, site: str, ref: str, purpose: str, rule: str, reason: str):
        self.rule = rule
        super().__init__(f"{site} refused to replicate {ref} for {purpose}: {reason}")
        # what to do depends on the rule: only some refusals can be changed by the person who asked
        if rule == "residency":  # the data may not move here, but it may still be asked where it lives
            self.hint = (f"the data may not leave {site}: `datalab query {site} {ref} --purpose {purpose}` "
                         "aggregates it there")
        elif rule in ("purposes", "prohibited_purposes"):
            self.hint = f"`datalab catalog --federated --purpose P` lists what {site} offers for a purpose P"
        elif rule in ("provider", "unreachable"):
            self.hint = f"check that {site} is up (`datalab peer list` has its URL) and run the command again"
        else:  # not-found, withdrawn, retention, classification, export control, an unknown site
            self.hint = f"`datalab catalog --federated` lists what {site} offers to this site"


def replicate(site: str, ref: str, purpose: str, timeout: float = 30.0, s: Settings | None = None,
              progress: Any = None) -> Manifest:
    """Replicate ``ref`` (DATASET@VERSION) from peer ``site`` for ``purpose``: negotiate, then transfer.

    Run at the consuming site; the replica's manifest is returned. It is only
    the composition of :func:`negotiate` and :func:`transfer`, so every check
    (the provider's decision, the agreement, the sha256 of every file, the
    purpose bound to the replica) and every audit entry is theirs. A version
    number already in this site's catalog is refused before anything is
    asked of the peer: a replica never replaces a version, so the agreement
    and the download would be wasted. A termination raises
    :class:`ReplicationRefused` with the provider's rule and reason.
    """
    from datalab.errors import UsageError
    from datalab.federation import transfer as tr
    from datalab.store import catalog as cat

    s = s or settings()
    dataset, _, version = ref.partition("@")
    if not dataset or not version:
        raise UsageError(f"name the version to replicate: DATASET@VERSION, got {ref!r}")
    ref = f"{dataset}@{version.removeprefix('v')}"
    try:
        tr.refuse_existing(dataset, version.removeprefix("v"), s)
    except tr.AlreadyHere as e:
        cat.Catalog(s.catalog_url).audit("cli", "replicate", ref, "refused",
                                         {"site": site, "purpose": purpose, "rule": "exists", "reason": str(e)})
        raise
    n = negotiate(site, ref, purpose, timeout, s)
    if n.state != "FINALIZED":  # the termination is already audited (negotiate, and this site's callback)
        raise ReplicationRefused(site, ref, purpose, n.rule or "provider", n.reason or "terminated")
    agreement = str((n.agreement or {}).get("@id"))
    try:
        return transfer(agreement, timeout, s, progress)
    except PeerError as e:  # the agreement stands: rerunning only the transfer resumes a partial download
        e.hint = f"the agreement stands: `datalab transfer {agreement}` tries again and resumes what was downloaded"
        raise


def query(site: str, ref: str, purpose: str, group_by: str, aggs: str, s: Settings | None = None) -> dict[str, Any]:
    """Ask ``site`` a declared aggregation of ``ref`` for ``purpose``; audited here with the answer's hash."""
    import hashlib

    from datalab.federation import query as cq
    from datalab.federation.identity import get_peer
    from datalab.store import catalog as cat

    s = s or settings()
    dataset, _, version = ref.partition("@")
    if not dataset or not version:
        raise DatalabError(f"name the version to query: DATASET@VERSION, got {ref!r}")
    q = cq.parse(group_by, aggs)  # refuse locally what the provider would refuse anyway
    req = {"dataset": dataset, "version": version.removeprefix("v"), "purpose": purpose, **q.to_dict()}
    audit = cat.Catalog(s.catalog_url).audit
    try:
        res = call(get_peer(site, s), "POST", "/dsp/query", req, timeout=120, s=s)
    except PeerError as e:
        audit("cli", "dsp.query", ref, "refused", {"site": site, "purpose": purpose, **q.to_dict(), "reason": str(e)})
        raise
    digest = hashlib.sha256(json.dumps(res.get("groups"), sort_keys=True).encode()).hexdigest()
    if digest != res.get("result_sha256"):
        raise PeerError(f"{site}'s answer does not match its own hash")
    audit("cli", "dsp.query", ref, "answered", {"site": site, "purpose": purpose, **q.to_dict(),
                                                "groups": len(res["groups"]), "suppressed_groups": res["suppressed_groups"],
                                                "rows_scanned": res["rows_scanned"], "result_sha256": digest})
    return res
