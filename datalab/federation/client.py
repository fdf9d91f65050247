"""Calling peer sites: signed requests and the federated catalog.

Every call gets a fresh token (one nonce per request), so a retry is a new
request, never a replay the peer would refuse.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from datalab.config import Settings, settings
from datalab.errors import DatalabError
from datalab.federation import dsp
from datalab.federation.identity import Peer, issue_token, list_peers


class PeerError(DatalabError):
    """A peer that is down, slow, or answered with a DSP error."""


def call(peer: Peer, method: str, path: str, msg: dict[str, Any] | None = None, timeout: float = 10.0,
         s: Settings | None = None) -> dict[str, Any]:
    """One signed DSP request to ``peer``; returns its JSON answer or raises PeerError with the reason."""
    headers = {"Authorization": issue_token(peer.name, s)}
    try:
        r = httpx.request(method, peer.url + path, json=msg, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise PeerError(f"peer {peer.name} ({peer.url}) did not answer within {timeout:g} s") from None
    except httpx.HTTPError as e:
        raise PeerError(f"peer {peer.name} ({peer.url}) is unreachable: {e.__class__.__name__}") from None
    try:
        doc = r.json()
    except ValueError:
        raise PeerError(f"peer {peer.name} answered {r.status_code} without JSON") from None
    if r.status_code >= 400:
        reason = "; ".join(doc.get("reason") or [doc.get("error", "")]) if isinstance(doc, dict) else str(doc)
        raise PeerError(f"peer {peer.name} refused ({r.status_code}): {reason}")
    return doc


def federated_catalog(purpose: str | None = None, timeout: float = 5.0,
                      s: Settings | None = None, peers: bool = True) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Local and every peer's catalog entries, asked in parallel; (rows, {peer: why it is missing}).

    A purpose filters each offer with the same purpose rule as a pull
    (``policy.purpose_allowed``); a down or slow peer is reported, never fatal.
    """
    from datalab.federation.identity import site_name, site_url
    from datalab.policy import purpose_allowed

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
