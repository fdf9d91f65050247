"""Withdrawal across sites (issue 18 item 6): a firm withdraws at munich while stuttgart, which holds a
replica, is down; munich restarts; when stuttgart is back the signed event arrives from the outbox,
stuttgart deletes its copy with the deletion proof, and munich audits the confirmation.

Runs after the transfer test (it withdraws munich's only version); alone, it makes the replica first.
"""

from __future__ import annotations

import hashlib
import json
import time

import httpx

from datalab.federation import events
from datalab.federation.client import negotiate, transfer
from tests.conftest import SPINDLE
from tests.federation_harness import Site
from tests.test_federation import audit_of, token
from tests.test_federation_transfer import catalog_row


def _wait(cond, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_withdrawal_reaches_a_peer_that_was_offline(federation: dict[str, Site]) -> None:
    from datalab.policy import retention

    a, b, c = federation["munich"], federation["stuttgart"], federation["kajaani"]
    if catalog_row(b, "plant-telemetry", "1.0.0") is None:
        with b.here():
            n = negotiate("munich", "plant-telemetry@1.0.0", "research", timeout=20)
            transfer(n.agreement["@id"])
    vdir = b.home / "versions" / "plant-telemetry" / "1.0.0"
    m = json.loads((vdir / "manifest.json").read_text())
    shas = {f["sha256"] for f in m["files"]}
    assert all((b.home / f["path"]).exists() for f in m["files"])

    # a forged event (signed by another site's key) deletes nothing
    with c.here():
        forged = events.sign({"@type": "datalab:WithdrawalEvent", "id": "urn:uuid:forged", "issuer": "munich",
                              "dataset": "plant-telemetry", "version": "1.0.0", "agreement": m["replica"]["agreement"],
                              "reason": "forged"})
    r = httpx.post(f"{b.url}/dsp/events/withdrawal", json=forged, headers={"Authorization": token(a, "stuttgart")}, timeout=10)
    assert r.status_code == 400 and "signature" in r.json()["reason"][0]
    assert all((b.home / f["path"]).exists() for f in m["files"])

    b.stop()
    with a.here():
        rep = retention.withdraw_contract(SPINDLE, "test", "the firm withdrew its contract")
        assert "plant-telemetry@1.0.0" in rep.versions_withdrawn
    def tried() -> bool:
        with a.here():
            return any(o["subject"] == "plant-telemetry@1.0.0" and o["attempts"] >= 1 and o["state"] == "pending"
                       for o in events.outbox())
    assert _wait(tried), "munich never tried to reach stuttgart"
    a.kill()  # the outbox survives a crash of the provider
    a.start()
    b.start()

    def confirmed() -> bool:
        with a.here():
            return any(o["subject"] == "plant-telemetry@1.0.0" and o["state"] == "confirmed" for o in events.outbox())
    assert _wait(confirmed), "the event never reached stuttgart"

    # stuttgart: withdrawn, no file of the replica left anywhere under its home
    assert catalog_row(b, "plant-telemetry", "1.0.0").status == "withdrawn"
    left = {p for p in b.home.rglob("*") if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() in shas}
    assert not left, left
    assert sorted(p.name for p in vdir.iterdir()) == ["card.md", "manifest.json"]
    assert "WITHDRAWN" in (vdir / "card.md").read_text()
    deleted = [e for e in audit_of(b, "delete") if e["actor"] == "site:munich"]
    assert {f["sha256"] for e in deleted for f in e["detail"]["files"]} >= shas
    # munich: the peer's confirmation with its proof
    conf = next(e for e in audit_of(a, "federation.withdrawal") if e["decision"] == "confirmed")
    assert conf["detail"]["peer"] == "stuttgart" and conf["detail"]["files_deleted"] >= len(shas)
