"""DSP 2025-1 messages: the site's DCAT catalog with ODRL offers, and error messages.

The catalog is built from the published versions' manifests: each version's
effective sovereignty policy becomes one ``odrl:Offer`` whose constraints
say purpose, prohibited purposes, residency (spatial), retention (dateTime),
classification, export control and licence. What a peer site could never
receive (classification above its cap, export-controlled content for a site
not cleared) is not listed to it at all.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from datalab.config import Settings, settings
from datalab.contracts import datasets
from datalab.contracts.policy import CLASSIFICATIONS
from datalab.store.manifest import Manifest
from datalab.store.manifests import list_versions, read_manifest

CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]
MAX_MESSAGE_BYTES = 64 << 10  # a DSP control message is small; anything bigger is refused before parsing


def urn(kind: str, *parts: str) -> str:
    """A stable URN for a lab object (dataset version, offer, site) so ids survive restarts."""
    return "urn:datalab:" + kind + ":" + ":".join(parts)


def offer(m: Manifest, name: str) -> dict[str, Any]:
    """The ODRL offer of a version: its effective policy as permission/prohibition constraints."""
    pol = m.policy
    cons: list[dict[str, Any]] = [
        {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": list(pol.get("purposes") or [])},
        {"leftOperand": "spatial", "operator": "isAnyOf", "rightOperand": list(pol.get("residency") or [])},
        {"leftOperand": "https://w3id.org/datalab/classification", "operator": "lteq",
         "rightOperand": pol.get("classification", "internal")},
    ]
    if pol.get("retention_until"):
        cons.append({"leftOperand": "dateTime", "operator": "lteq", "rightOperand": f"{pol['retention_until']}T23:59:59Z"})
    if pol.get("export_control"):
        cons.append({"leftOperand": "https://w3id.org/datalab/exportControl", "operator": "eq", "rightOperand": "cleared"})
    out: dict[str, Any] = {"@id": urn("offer", name, m.version), "@type": "Offer",
                           "permission": [{"action": "use", "constraint": cons}]}
    if pol.get("prohibited_purposes"):
        out["prohibition"] = [{"action": "use", "constraint": [
            {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": list(pol["prohibited_purposes"])}]}]
    if pol.get("license"):
        out["obligation"] = [{"action": "attribute", "constraint": [
            {"leftOperand": "https://w3id.org/datalab/license", "operator": "isAnyOf", "rightOperand": list(pol["license"])}]}]
    return out


def policy_in_words(pol: dict[str, Any]) -> str:
    """One line a person reads in `catalog --federated`."""
    words = [f"purposes {', '.join(pol.get('purposes') or []) or 'none'}"]
    if pol.get("prohibited_purposes"):
        words.append(f"never {', '.join(pol['prohibited_purposes'])}")
    words.append(f"stays in {', '.join(pol.get('residency') or []) or 'nowhere'}")
    words.append(pol.get("classification", "internal"))
    if pol.get("retention_until"):
        words.append(f"delete after {pol['retention_until']}")
    if pol.get("export_control"):
        words.append("export-controlled")
    if pol.get("license"):
        words.append(f"licence {', '.join(pol['license'])}")
    return "; ".join(words)


def may_ever_receive(pol: dict[str, Any], site: datasets.Site | None) -> bool:
    """Whether ``site`` could ever hold or query this version (classification cap, export control)."""
    if site is None:
        return False
    if CLASSIFICATIONS.index(pol.get("classification", "internal")) > CLASSIFICATIONS.index(site.max_classification):
        return False
    return not (pol.get("export_control") and not site.export_cleared)


def catalog(peer_site: str | None, base_url: str, s: Settings | None = None) -> dict[str, Any]:
    """The site's DCAT catalog as DSP 2025-1 ``Catalog``, filtered for ``peer_site`` (None: local view)."""
    s = s or settings()
    from datalab.federation.identity import site_name

    sites = datasets.load_sites(s.contracts_dir)
    peer = sites.get(peer_site) if peer_site else None
    service_id = urn("service", site_name(s))
    out: dict[str, Any] = {"@context": CONTEXT, "@id": urn("catalog", site_name(s)), "@type": "Catalog",
                           "participantId": urn("site", site_name(s)),
                           "service": [{"@id": service_id, "@type": "DataService", "endpointURL": base_url + "/dsp"}]}
    items = []
    for name in datasets.list_specs(s.contracts_dir):
        for row in list_versions(name, s):
            if row["status"] != "active":
                continue
            m = read_manifest(name, row["version"], s)
            if peer_site is not None and not may_ever_receive(m.policy, peer):
                continue
            items.append({
                "@id": urn("dataset", name, m.version), "@type": "Dataset",
                "title": m.title or name, "description": m.description,
                "https://w3id.org/datalab/dataset": name, "version": m.version,
                "https://w3id.org/datalab/rows": m.rows,
                "https://w3id.org/datalab/schema": {k: str(v) for k, v in m.schema.items()},
                "https://w3id.org/datalab/card": f"{base_url}/dsp/cards/{name}/{m.version}",
                "https://w3id.org/datalab/policyText": policy_in_words(m.policy),
                "hasPolicy": [offer(m, name)],
                "distribution": [{"@type": "Distribution", "format": "HttpData-PULL", "accessService": service_id,
                                  "https://w3id.org/datalab/files": [
                                      {"sha256": f.sha256, "bytes": f.bytes} for f in m.files],
                                  "https://w3id.org/datalab/snapshot": str(m.snapshot_id)}],
            })
    if items:
        out["dataset"] = items
    return out


def error(kind: str, code: str, reason: str, **ids: str) -> dict[str, Any]:
    """A DSP error message (CatalogError, ContractNegotiationError, TransferError)."""
    if kind in ("ContractNegotiationError", "TransferError"):  # the schemas require both process ids
        ids = {"providerPid": "", "consumerPid": "", **ids}
    return {"@context": CONTEXT, "@type": kind, **ids, "code": code, "reason": [reason]}


def parse(body: bytes, expect_type: str) -> dict[str, Any]:
    """A DSP message from a request body; ValueError with the reason for anything malformed."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message too large: {len(body):,} bytes (limit {MAX_MESSAGE_BYTES:,})")
    try:
        msg = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ValueError("a DSP message is a JSON-LD object")
    ctx = msg.get("@context")
    ctx = [ctx] if isinstance(ctx, str) else ctx
    if not isinstance(ctx, list) or CONTEXT[0] not in ctx:
        raise ValueError(f"@context must include {CONTEXT[0]}")
    if msg.get("@type") != expect_type:
        raise ValueError(f"expected a {expect_type}, got @type {str(msg.get('@type'))[:60]!r}")
    strict_check(msg)
    return msg


def strict_check(msg: dict[str, Any]) -> None:
    """With ``DATALAB_DSP_VALIDATE=1`` (the tests), every DSP message sent or received is checked
    against the official schemas; a mismatch is a ValueError naming the field."""
    if not settings().dsp_validate or "@type" not in msg or shared_dsp_dir() is None:
        return
    if str(msg["@type"]).startswith("datalab:"):  # the lab's own events (withdrawal), not DSP messages
        return
    problems = schema_problems(msg)
    if problems:
        raise ValueError(f"{msg.get('@type')} does not match the DSP 2025-1 schema: {'; '.join(problems[:3])}")


# -- validation against the shared official schemas -------------------------------

SCHEMAS = {
    "Catalog": "catalog/catalog-schema.json",
    "CatalogRequestMessage": "catalog/catalog-request-message-schema.json",
    "CatalogError": "catalog/catalog-error-schema.json",
    "Dataset": "catalog/dataset-schema.json",
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": "negotiation/contract-agreement-verification-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractNegotiationTerminationMessage": "negotiation/contract-negotiation-termination-message-schema.json",
    "ContractNegotiation": "negotiation/contract-negotiation-schema.json",
    "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
    "TransferRequestMessage": "transfer/transfer-request-message-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferCompletionMessage": "transfer/transfer-completion-message-schema.json",
    "TransferTerminationMessage": "transfer/transfer-termination-message-schema.json",
    "TransferSuspensionMessage": "transfer/transfer-suspension-message-schema.json",
    "TransferProcess": "transfer/transfer-process-schema.json",
    "TransferError": "transfer/transfer-error-schema.json",
}


def shared_dsp_dir() -> Path | None:
    """``../shared/dsp-2025-1`` beside the repo (or ``DATALAB_DSP_SCHEMAS``), if present."""
    env = settings().dsp_schemas
    cands = [env] if env else []
    cands.append(Path(__file__).resolve().parents[3] / "shared" / "dsp-2025-1")
    return next((c for c in cands if (c / "check_message.py").exists()), None)


def schema_problems(msg: dict[str, Any]) -> list[str]:
    """Problems of ``msg`` against the official schema of its @type (empty: valid).

    Raises FileNotFoundError when the shared schemas are absent: callers
    (tests) decide to skip; the service does not depend on them.
    """
    d = shared_dsp_dir()
    if d is None:
        raise FileNotFoundError("../shared/dsp-2025-1 (the official DSP schemas) is absent")
    rel = SCHEMAS.get(str(msg.get("@type")))
    if rel is None:
        return [f"no schema for @type {msg.get('@type')!r}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in _validator(str(d), rel).iter_errors(msg)]


@functools.lru_cache(maxsize=64)
def _validator(folder: str, rel: str) -> Any:
    """The shared validator's schema check for ``rel`` (cached: building the registry reads every schema)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dsp_check_message", Path(folder) / "check_message.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.validator(rel)
