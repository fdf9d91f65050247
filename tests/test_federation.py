"""Federation over DSP 2025-1 (issue 18): site identity, tokens, catalog.

Three real ``datalab serve`` processes on loopback (tests/federation_harness.py).
Every DSP message sent or received here is validated with the official
schemas of ../shared/dsp-2025-1 (skipped with the reason when absent).
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from datalab.federation import dsp, identity
from tests.federation_harness import Site

SHARED = dsp.shared_dsp_dir()
needs_schemas = pytest.mark.skipif(SHARED is None, reason="../shared/dsp-2025-1 (official DSP schemas) is absent")
CATALOG_REQ = {"@context": dsp.CONTEXT, "@type": "CatalogRequestMessage", "filter": []}


def valid(msg: dict[str, Any]) -> dict[str, Any]:
    if SHARED is not None:
        problems = dsp.schema_problems(msg)
        assert not problems, (msg.get("@type"), problems[:5])
    return msg


def token(frm: Site, to: str, **kw: Any) -> str:
    with frm.here():
        return identity.issue_token(to, **kw)


def audit_of(site: Site, action: str) -> list[dict[str, Any]]:
    from datalab.store import catalog as cat

    with site.here():
        from datalab.config import settings

        return [e.__dict__ for e in cat.Catalog(settings().catalog_url).audit_entries(action)]


def ask_catalog(site: Site, tok: str | None, body: Any = CATALOG_REQ, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": tok} if tok else {}
    if raw is not None:
        return httpx.post(f"{site.url}/dsp/catalog/request", content=raw, headers=headers, timeout=30)
    return httpx.post(f"{site.url}/dsp/catalog/request", json=valid(body), headers=headers, timeout=30)


# -- item 1: identity ---------------------------------------------------------


def test_site_key_is_private_and_stable(federation: dict[str, Site]) -> None:
    a = federation["munich"]
    with a.here():
        k1 = identity.public_key_b64()
        k2 = identity.public_key_b64()
    key_file = a.home / "secrets" / "site_ed25519.pem"
    assert k1 == k2 and len(k1) == 43
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert k1 not in a.log.read_text() and "PRIVATE KEY" not in a.log.read_text()


def test_peer_add_refuses_a_bad_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATALAB_HOME", str(tmp_path))
    monkeypatch.setenv("DATALAB_SITE", "munich")
    with pytest.raises(identity.DatalabError, match="Ed25519 public key"):
        identity.add_peer("kajaani", "http://127.0.0.1:1", "not-a-key")
    with pytest.raises(identity.DatalabError, match="http"):
        identity.add_peer("kajaani", "ftp://x", identity.public_key_b64())
    assert identity.list_peers() == []


def test_token_refusals_are_401_audited_and_change_nothing(federation: dict[str, Site]) -> None:
    a, b, c = federation["munich"], federation["stuttgart"], federation["garching-open"]
    before = len(audit_of(a, "dsp.catalog"))
    good = token(b, "munich")
    assert ask_catalog(a, good).status_code == 200
    forged_claims, _ = good[len(identity.TOKEN_PREFIX):].split(".")
    with c.here():  # garching-open signs claims that say stuttgart
        forged = identity.TOKEN_PREFIX + forged_claims + "." + identity._b64(identity.private_key().sign(forged_claims.encode()))
    rogue_home = a.home.parent / "rogue"
    rogue = Site("rogue", rogue_home, a.contracts)
    rogue_home.mkdir(exist_ok=True)
    cases = {
        "no site token": None,
        "replayed": good,
        "forged": forged,
        "expired": token(b, "munich", now=time.time() - 3600),
        "not for this site": token(b, "kajaani"),
        "unknown site": token(rogue, "munich"),
        "malformed": "dlsite.garbage",
    }
    for why, tok in cases.items():
        r = ask_catalog(a, tok)
        assert r.status_code == 401, (why, r.text)
        body = valid(r.json())
        assert body["@type"] == "CatalogError" and why.split()[0] in body["reason"][0], (why, body)
    entries = audit_of(a, "dsp.catalog")[before:]
    assert [e["decision"] for e in entries] == ["allowed"] + ["refused"] * len(cases)


def test_bad_messages_are_dsp_errors(federation: dict[str, Site]) -> None:
    a, b = federation["munich"], federation["stuttgart"]
    cases = {
        b"{not json": (400, "malformed JSON"),
        json.dumps({"@context": ["https://example.org/ctx"], "@type": "CatalogRequestMessage"}).encode(): (400, "@context"),
        json.dumps({"@context": dsp.CONTEXT, "@type": "ContractRequestMessage"}).encode(): (400, "expected a CatalogRequestMessage"),
        json.dumps({"@context": dsp.CONTEXT, "@type": "CatalogRequestMessage", "pad": "x" * (dsp.MAX_MESSAGE_BYTES + 1)}).encode(): (413, "too large"),
        b"[]": (400, "JSON-LD object"),
    }
    for raw, (status, why) in cases.items():
        r = ask_catalog(a, token(b, "munich"), raw=raw)
        assert r.status_code == status, (why, r.text)
        assert why in valid(r.json())["reason"][0]
        assert "Traceback" not in r.text


# -- item 2: catalog ----------------------------------------------------------


def test_catalog_lists_the_version_with_its_policy_as_an_offer(federation: dict[str, Site]) -> None:
    a, b = federation["munich"], federation["stuttgart"]
    doc = valid(ask_catalog(a, token(b, "munich")).json())
    assert doc["@type"] == "Catalog" and doc["participantId"] == "urn:datalab:site:munich"
    [d] = doc["dataset"]
    assert d["version"] == "1.0.0" and d["https://w3id.org/datalab/rows"] > 0
    cons = {c["leftOperand"]: c for c in d["hasPolicy"][0]["permission"][0]["constraint"]}
    assert cons["spatial"]["rightOperand"] == ["DE"]
    assert "research" in cons["purpose"]["rightOperand"]
    assert cons["https://w3id.org/datalab/classification"]["rightOperand"] == "confidential"
    prohibited = d["hasPolicy"][0]["prohibition"][0]["constraint"][0]["rightOperand"]
    assert "model-training" in prohibited
    files = d["distribution"][0]["https://w3id.org/datalab/files"]
    assert files and all(len(f["sha256"]) == 64 for f in files)
    card = httpx.get(d["https://w3id.org/datalab/card"], headers={"Authorization": token(b, "munich")}, timeout=30)
    assert card.status_code == 200 and "plant-telemetry" in card.text


def test_a_site_below_the_classification_sees_nothing(federation: dict[str, Site]) -> None:
    a, c = federation["munich"], federation["garching-open"]
    doc = valid(ask_catalog(a, token(c, "munich")).json())
    assert "dataset" not in doc  # confidential data is never listed to a public-only site
    card = httpx.get(f"{a.url}/dsp/cards/plant-telemetry/1.0.0", headers={"Authorization": token(c, "munich")}, timeout=30)
    assert card.status_code == 404 and valid(card.json())["@type"] == "CatalogError"


def test_federated_catalog_merges_peers_and_names_a_down_one(federation: dict[str, Site]) -> None:
    from datalab.federation.client import federated_catalog

    b, c = federation["stuttgart"], federation["kajaani"]
    c.stop()
    try:
        with b.here():
            t0 = time.monotonic()
            # a generous timeout for the live peer (a loaded 2-core CI machine); the down one fails fast
            rows, failed = federated_catalog(timeout=15)
            assert time.monotonic() - t0 < 20
            assert [(r["site"], r["dataset"], r["version"]) for r in rows] == [("munich", "plant-telemetry", "1.0.0")]
            assert "DE" in rows[0]["policy"]
            assert set(failed) == {"kajaani"} and "unreachable" in failed["kajaani"]
            rows, _ = federated_catalog(purpose="model-training", timeout=15)
            assert rows == []  # prohibited purpose: the offer does not apply
    finally:
        c.start()
    env = b.env()  # this process's environment minus any other lab's DATALAB_* (lab_env)
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "datalab.cli.commands", "catalog", "--federated", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["unavailable"] == {} and got["datasets"][0]["site"] == "munich"
