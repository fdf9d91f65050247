"""DSP contract negotiation between real sites (issue 18 item 3): the refusal matrix and the state machine.

The sites run with DATALAB_DSP_VALIDATE=1: every DSP message they send or
receive is checked against ../shared/dsp-2025-1's schemas, so a malformed
message fails the negotiation these tests look at.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datalab.federation import dsp
from datalab.federation import negotiation as neg
from tests.federation_harness import Site
from tests.test_federation import audit_of, token, valid


def negotiate(consumer: Site, provider: str, ref: str, purpose: str) -> neg.Negotiation:
    from datalab.federation.client import negotiate as run

    with consumer.here():
        return run(provider, ref, purpose, timeout=20)


def provider_side(a: Site, consumer_pid: str) -> neg.Negotiation:
    with a.here():
        [n] = [n for n in neg.list_all() if n.consumer_pid == consumer_pid]
    return n


def test_agreement_is_finalized_at_both_sites_and_audited_under_one_id(federation: dict[str, Site]) -> None:
    a, b = federation["munich"], federation["stuttgart"]
    n = negotiate(b, "munich", "plant-telemetry@1.0.0", "research")
    assert n.state == "FINALIZED", (n.rule, n.reason)
    p = provider_side(a, n.consumer_pid)
    deadline = time.monotonic() + 10
    while p.state != "FINALIZED" and time.monotonic() < deadline:
        time.sleep(0.05)
        p = provider_side(a, n.consumer_pid)
    assert p.state == "FINALIZED" and p.agreement == n.agreement
    valid({"@context": dsp.CONTEXT, "@type": "ContractAgreementMessage", "providerPid": p.pid,
           "consumerPid": n.consumer_pid, "agreement": n.agreement})
    assert n.agreement["assignee"] == "urn:datalab:site:stuttgart"
    assert {"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"} in n.agreement["permission"][0]["constraint"]
    got = httpx.get(f"{a.url}/dsp/negotiations/{p.pid}", headers={"Authorization": token(b, "munich")}, timeout=10)
    assert valid(got.json())["state"] == "FINALIZED"
    steps_a = [e["decision"] for e in audit_of(a, "dsp.negotiation") if e["subject"] == n.consumer_pid]
    steps_b = [e["decision"] for e in audit_of(b, "dsp.negotiation") if e["subject"] == n.consumer_pid]
    assert steps_a == ["requested", "agreed", "verified", "finalized"], steps_a
    assert steps_b[0] == "requested" and "agreed" in steps_b and "finalized" in steps_b, steps_b


@pytest.mark.parametrize(("consumer", "purpose", "rule"), [
    ("stuttgart", "model-training", "prohibited_purposes"),
    ("stuttgart", "model-training.fine-tuning", "prohibited_purposes"),  # child of a prohibited purpose
    ("stuttgart", "astrology", "purposes"),  # not a word of the vocabulary
    ("kajaani", "research", "residency"),  # FI is outside DE
])
def test_refusal_matrix(federation: dict[str, Site], consumer: str, purpose: str, rule: str) -> None:
    a = federation["munich"]
    n = negotiate(federation[consumer], "munich", "plant-telemetry@1.0.0", purpose)
    assert n.state == "TERMINATED" and n.rule == rule, (n.rule, n.reason)
    assert (f"rule {rule}" in n.reason and "ps_" in n.reason) or rule == "purposes"
    for firm in ("bavaria-spindle", "lyon-presses", "oulu-pumps"):
        assert firm not in n.reason  # inputs are named by pseudonym to the peer
    p = provider_side(a, n.consumer_pid)
    assert p.state == "TERMINATED" and p.rule == rule
    assert p.agreement is None


def test_child_of_an_allowed_purpose_is_agreed(federation: dict[str, Site]) -> None:
    n = negotiate(federation["stuttgart"], "munich", "plant-telemetry@1.0.0", "research.publication")
    assert n.state == "FINALIZED", n.reason


def test_classification_cap_and_unknown_versions_terminate(federation: dict[str, Site]) -> None:
    a, g, b = federation["munich"], federation["garching-open"], federation["stuttgart"]
    n = negotiate(b, "munich", "plant-telemetry@9.9.9", "research")
    assert n.state == "TERMINATED" and n.rule == "not-found"
    # garching-open has no service: talk to munich directly and read the provider's state
    msg = valid({"@context": dsp.CONTEXT, "@type": "ContractRequestMessage", "consumerPid": "urn:uuid:g-1",
                 "offer": {"@id": "urn:datalab:offer:plant-telemetry:1.0.0", "@type": "Offer",
                           "target": "urn:datalab:dataset:plant-telemetry:1.0.0",
                           "permission": [{"action": "use", "constraint": [
                               {"leftOperand": "purpose", "operator": "eq", "rightOperand": "research"}]}]},
                 "callbackAddress": f"{a.url.replace(str(a.port), '1')}/dsp/callback"})
    with g.here():
        from datalab.federation.identity import get_peer

        assert get_peer("munich")
    r = httpx.post(f"{a.url}/dsp/negotiations/request", json=msg, headers={"Authorization": token(g, "munich")}, timeout=10)
    assert r.status_code == 400 and "registered URL" in valid(r.json())["reason"][0]
    with a.here():
        from datalab.federation.identity import get_peer

        msg["callbackAddress"] = get_peer("garching-open").url + "/dsp/callback"
    r = httpx.post(f"{a.url}/dsp/negotiations/request", json=msg, headers={"Authorization": token(g, "munich")}, timeout=10)
    assert r.status_code == 201, r.text
    pid = valid(r.json())["providerPid"]
    for _ in range(100):
        st_ = httpx.get(f"{a.url}/dsp/negotiations/{pid}", headers={"Authorization": token(g, "munich")}, timeout=10).json()
        if st_["state"] == "TERMINATED":
            break
        time.sleep(0.05)
    assert st_["state"] == "TERMINATED"
    assert provider_side(a, "urn:uuid:g-1").rule == "classification"
    # another site cannot read garching-open's negotiation
    r = httpx.get(f"{a.url}/dsp/negotiations/{pid}", headers={"Authorization": token(b, "munich")}, timeout=10)
    assert r.status_code == 404 and valid(r.json())["@type"] == "ContractNegotiationError"


def test_out_of_order_and_unknown_messages_change_nothing(federation: dict[str, Site]) -> None:
    a, b = federation["munich"], federation["stuttgart"]
    done = negotiate(b, "munich", "plant-telemetry@1.0.0", "research")
    p = provider_side(a, done.consumer_pid)
    before = (p.state, len(audit_of(a, "dsp.negotiation")))
    verification = {"@context": dsp.CONTEXT, "@type": "ContractAgreementVerificationMessage",
                    "providerPid": p.pid, "consumerPid": p.consumer_pid}
    r = httpx.post(f"{a.url}/dsp/negotiations/{p.pid}/agreement/verification", json=valid(verification),
                   headers={"Authorization": token(b, "munich")}, timeout=10)
    assert r.status_code == 409 and "FINALIZED" in valid(r.json())["reason"][0]
    assert provider_side(a, done.consumer_pid).state == before[0]
    # an agreement for a negotiation stuttgart never started: 404 at the consumer
    agreement = {"@context": dsp.CONTEXT, "@type": "ContractAgreementMessage", "providerPid": "urn:uuid:x",
                 "consumerPid": "urn:uuid:never", "agreement": done.agreement}
    r = httpx.post(f"{b.url}/dsp/callback/negotiations/urn:uuid:never/agreement", json=valid(agreement),
                   headers={"Authorization": token(a, "stuttgart")}, timeout=10)
    assert r.status_code == 404 and valid(r.json())["@type"] == "ContractNegotiationError"
    # a verification for an unknown negotiation, and a malformed request
    r = httpx.post(f"{a.url}/dsp/negotiations/urn:uuid:nope/agreement/verification",
                   json={**verification, "providerPid": "urn:uuid:nope"}, headers={"Authorization": token(b, "munich")}, timeout=10)
    assert r.status_code == 404
    r = httpx.post(f"{a.url}/dsp/negotiations/request", json={"@context": dsp.CONTEXT, "@type": "ContractRequestMessage"},
                   headers={"Authorization": token(b, "munich")}, timeout=10)
    assert r.status_code == 400 and valid(r.json())["@type"] == "ContractNegotiationError"


# -- the state machine, property-tested ----------------------------------------------

MESSAGES = sorted(neg.MESSAGE_TARGET)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(MESSAGES), max_size=12))
def test_no_message_sequence_reaches_an_illegal_state(seq: list[str]) -> None:
    state: str | None = None
    for m in seq:
        try:
            new = neg.next_state(state, m)
        except neg.IllegalTransition:
            continue  # refused: the state stays
        assert new in neg.TRANSITIONS[state] and new in neg.STATES
        assert state not in neg.TERMINAL
        state = new


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(MESSAGES), max_size=8))
def test_the_store_follows_the_machine(tmp_path_factory: Any, seq: list[str]) -> None:
    home: Path = tmp_path_factory.mktemp("neg")
    import os

    os.environ["DATALAB_HOME"] = str(home)
    try:
        n = neg.create("provider", "peer", "urn:uuid:c", "d", "1.0.0", "research")
        state = n.state
        for m in seq:
            try:
                expected = neg.next_state(state, m)
            except neg.IllegalTransition:
                with pytest.raises(neg.IllegalTransition):
                    neg.advance(n.pid, m)
                assert neg.get(n.pid).state == state
                continue
            state = neg.advance(n.pid, m).state
            assert state == expected
        with sqlite3.connect(home / "federation.db") as c:
            assert c.execute("SELECT state FROM negotiations").fetchall() == [(state,)]
    finally:
        os.environ.pop("DATALAB_HOME", None)


def test_export_control_and_withdrawn_versions_terminate(published_template: tuple[Path, Path],
                                                         tmp_path_factory: Any) -> None:
    """The refusal matrix's last rows, decided by the provider's own code on a lab of its own.

    A copy of the published lab (so the shared federation is not changed): an
    export-controlled version is refused to a site without export clearance
    (rule export_control, even where its classification cap would allow it),
    and a withdrawn version to everyone (rule withdrawn), whatever the purpose.
    """
    import json
    import shutil

    from datalab.config import settings as lab_settings
    from datalab.errors import PolicyRefused
    from datalab.policy.withdrawals import withdraw_version
    from datalab.store.publish import publish, read_manifest
    from tests.federation_harness import EXTRA_SITE

    base = tmp_path_factory.mktemp("federation-refusals")
    contracts = base / "contracts"
    shutil.copytree(published_template[1], contracts)
    with open(contracts / "sites.yaml", "a") as f:
        f.write(EXTRA_SITE)
    lab = Site("munich", base / "munich", contracts)
    shutil.copytree(published_template[0], lab.home)
    with lab.here():
        s = lab_settings()
        assert publish("plant-telemetry", actor="test").version == "1.0.0"
        assert neg.decide("plant-telemetry", "1.0.0", "research", "stuttgart", s).version == "1.0.0"
        # the version as if published export-controlled: the manifest's policy is what decides
        m = read_manifest("plant-telemetry", "1.0.0", s)
        path = s.home / "versions" / "plant-telemetry" / "1.0.0" / "manifest.json"
        doc = json.loads(path.read_text())
        doc["policy"]["export_control"] = True
        path.write_text(json.dumps(doc))
        with pytest.raises(PolicyRefused) as e:
            neg.decide("plant-telemetry", "1.0.0", "research", "stuttgart", s)
        assert e.value.rule == "export_control", e.value
        for firm in ("bavaria-spindle", "lyon-presses", "oulu-pumps"):
            assert firm not in str(e.value)
        path.write_text(json.dumps({**doc, "policy": m.policy}))
        withdraw_version("plant-telemetry", "1.0.0", "firm withdrew", [], "test", s)
        for purpose in ("research", "research.publication"):
            with pytest.raises(PolicyRefused) as e:
                neg.decide("plant-telemetry", "1.0.0", purpose, "stuttgart", s)
            assert e.value.rule == "withdrawn", e.value
