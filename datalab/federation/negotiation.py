"""DSP contract negotiation: the state machine, its store, and the provider's decision.

Both sites keep their side of a negotiation in ``federation.db``; a message
moves a negotiation only along the DSP 2025-1 state machine, checked inside
one ``BEGIN IMMEDIATE`` transaction, so an out-of-order or replayed message
is refused and changes nothing. Each site records its state *before* it
sends the message that moves the peer, so an answer can never overtake the
record it answers.

The provider decides with the same policy code as a local pull (purpose
vocabulary and hierarchy, withdrawn versions, retention) plus the checks of
a copy to another site (every input's residency against the consumer site's
country, the site's classification cap) and export control. A refusal names
the rule and the input that set it by a keyed pseudonym, never by the
provider firm's contract id.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from datalab.config import Settings, settings
from datalab.contracts import contract as contracts_mod
from datalab.contracts import datasets
from datalab.errors import DatalabError, NotFound, PolicyRefused
from datalab.federation import dsp
from datalab.federation.identity import db
from datalab.store.manifest import Manifest

STATES = ("REQUESTED", "OFFERED", "ACCEPTED", "AGREED", "VERIFIED", "FINALIZED", "TERMINATED")
TERMINAL = frozenset({"FINALIZED", "TERMINATED"})
# DSP 2025-1 contract negotiation state machine: state -> states a message may move it to.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"REQUESTED", "OFFERED"}),
    "REQUESTED": frozenset({"OFFERED", "AGREED", "TERMINATED"}),
    "OFFERED": frozenset({"REQUESTED", "ACCEPTED", "TERMINATED"}),
    "ACCEPTED": frozenset({"AGREED", "TERMINATED"}),
    "AGREED": frozenset({"VERIFIED", "TERMINATED"}),
    "VERIFIED": frozenset({"FINALIZED", "TERMINATED"}),
    "FINALIZED": frozenset(),
    "TERMINATED": frozenset(),
}
# message (@type, or "Event:<eventType>") -> the state it moves a negotiation to
MESSAGE_TARGET = {
    "ContractRequestMessage": "REQUESTED",
    "ContractOfferMessage": "OFFERED",
    "Event:ACCEPTED": "ACCEPTED",
    "ContractAgreementMessage": "AGREED",
    "ContractAgreementVerificationMessage": "VERIFIED",
    "Event:FINALIZED": "FINALIZED",
    "ContractNegotiationTerminationMessage": "TERMINATED",
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS negotiations (
  pid TEXT PRIMARY KEY, role TEXT NOT NULL, peer TEXT NOT NULL, peer_pid TEXT, consumer_pid TEXT NOT NULL,
  dataset TEXT NOT NULL, version TEXT NOT NULL, purpose TEXT NOT NULL, state TEXT NOT NULL,
  agreement TEXT, rule TEXT, reason TEXT, callback TEXT, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS negotiations_agreement ON negotiations (json_extract(agreement, '$."@id"'));
"""


class IllegalTransition(DatalabError):
    """A message that the negotiation's current state does not allow."""


def next_state(state: str | None, message: str) -> str:
    """The state ``message`` moves a negotiation in ``state`` to; IllegalTransition otherwise."""
    target = MESSAGE_TARGET.get(message)
    if target is None:
        raise IllegalTransition(f"unknown negotiation message {message!r}")
    if target not in TRANSITIONS[state]:
        where = f"in state {state}" if state else "before any request"
        raise IllegalTransition(f"{message} is not allowed {where} (allowed next: {sorted(TRANSITIONS[state]) or 'none, final'})")
    return target


@dataclass(frozen=True)
class Negotiation:
    pid: str
    role: str  # "provider" or "consumer"
    peer: str
    peer_pid: str | None
    consumer_pid: str
    dataset: str
    version: str
    purpose: str
    state: str
    agreement: dict[str, Any] | None
    rule: str | None
    reason: str | None
    callback: str | None

    @property
    def provider_pid(self) -> str:
        return self.pid if self.role == "provider" else str(self.peer_pid or "")

    def message(self) -> dict[str, Any]:
        """The DSP ContractNegotiation of this negotiation."""
        return {"@context": dsp.CONTEXT, "@type": "ContractNegotiation", "providerPid": self.provider_pid,
                "consumerPid": self.consumer_pid, "state": self.state}


def _conn(s: Settings | None) -> sqlite3.Connection:
    c = db(s)
    c.executescript(SCHEMA)
    return c


def _row(r: sqlite3.Row | tuple | None) -> Negotiation | None:
    if r is None:
        return None
    v = list(r[:13])
    v[9] = json.loads(v[9]) if v[9] else None
    return Negotiation(*v)


_COLS = "pid, role, peer, peer_pid, consumer_pid, dataset, version, purpose, state, agreement, rule, reason, callback"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create(role: str, peer: str, consumer_pid: str, dataset: str, version: str, purpose: str,
           callback: str | None = None, pid: str | None = None, s: Settings | None = None) -> Negotiation:
    """Start a negotiation in REQUESTED (a ContractRequestMessage sent or received)."""
    pid = pid or f"urn:uuid:{uuid.uuid4()}"
    state = next_state(None, "ContractRequestMessage")
    with closing(_conn(s)) as c:
        c.execute("INSERT INTO negotiations VALUES (?,?,?,?,?,?,?,?,?,NULL,NULL,NULL,?,?,?)",
                  (pid, role, peer, None if role == "consumer" else consumer_pid, consumer_pid, dataset, version,
                   purpose, state, callback, now_iso(), now_iso()))
    return get(pid, s)


def get(pid: str, s: Settings | None = None, peer: str | None = None) -> Negotiation:
    """This site's negotiation ``pid`` (its own id); with ``peer``, only if that site is the other party."""
    with closing(_conn(s)) as c:
        n = _row(c.execute(f"SELECT {_COLS} FROM negotiations WHERE pid=?", (pid,)).fetchone())
    if n is None or (peer is not None and n.peer != peer):
        raise NotFound(f"no negotiation {pid[:80]!r}" + (f" with {peer}" if peer else ""))
    return n


def by_agreement(agreement_id: str, s: Settings | None = None) -> Negotiation:
    with closing(_conn(s)) as c:
        n = _row(c.execute(f"SELECT {_COLS} FROM negotiations WHERE json_extract(agreement, '$.\"@id\"')=?",
                           (agreement_id,)).fetchone())
    if n is None:
        raise NotFound(f"no agreement {agreement_id[:80]!r}")
    return n


def list_all(s: Settings | None = None) -> list[Negotiation]:
    with closing(_conn(s)) as c:
        return [n for r in c.execute(f"SELECT {_COLS} FROM negotiations ORDER BY created") if (n := _row(r))]


def advance(pid: str, message: str, s: Settings | None = None, *, peer_pid: str | None = None,
            agreement: dict[str, Any] | None = None, rule: str | None = None, reason: str | None = None,
            expect_state: str | None = None) -> Negotiation:
    """Move negotiation ``pid`` by ``message`` atomically; IllegalTransition (nothing changed) if not allowed."""
    with closing(_conn(s)) as c:
        c.execute("BEGIN IMMEDIATE")
        try:
            cur = _row(c.execute(f"SELECT {_COLS} FROM negotiations WHERE pid=?", (pid,)).fetchone())
            if cur is None:
                raise NotFound(f"no negotiation {pid[:80]!r}")
            if expect_state is not None and cur.state != expect_state:
                raise IllegalTransition(f"negotiation is {cur.state}, not {expect_state}")
            new = next_state(cur.state, message)
            c.execute("UPDATE negotiations SET state=?, peer_pid=COALESCE(peer_pid, ?), agreement=COALESCE(?, agreement), "
                      "rule=COALESCE(?, rule), reason=COALESCE(?, reason), updated=? WHERE pid=?",
                      (new, peer_pid, json.dumps(agreement) if agreement else None, rule, reason, now_iso(), pid))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
    return get(pid, s)


# -- the provider's decision ----------------------------------------------------


def input_label(cid: str, s: Settings) -> str:
    """An input as a peer may see it: a keyed pseudonym, never the firm's contract id."""
    from datalab.policy.pseudonym import key, pseudonym

    return "input " + pseudonym(key(s), "federation-input", cid)


def decide(dataset: str, version: str, purpose: str, consumer_site: str,
           s: Settings | None = None, data_moves: bool = True) -> Manifest:
    """The manifest if ``consumer_site`` may use ``dataset@version`` for ``purpose``; PolicyRefused otherwise.

    ``data_moves=False`` is compute-to-data: the data stays at this site, so
    the residency rule does not apply; every other rule does. The refusal's
    message is meant for the peer: inputs appear as pseudonyms.
    """
    from datalab.contracts.policy import expand_residency
    from datalab.federation.dsp import may_ever_receive
    from datalab.policy.sovereignty import check_pull_purpose, input_policies, policy_from_manifest
    from datalab.store.manifests import read_manifest

    s = s or settings()
    m = read_manifest(dataset, version, s)
    sites = datasets.load_sites(s.contracts_dir)
    site = sites.get(consumer_site)
    if site is None:
        raise PolicyRefused("site", f"site {consumer_site!r} is not in this site's sites.yaml")
    if m.status == "withdrawn":
        raise PolicyRefused("withdrawn", f"version {m.version} was withdrawn (rule withdrawn)")
    if not may_ever_receive(m.policy, site):
        rule = "export_control" if m.policy.get("export_control") and not site.export_cleared else "classification"
        raise PolicyRefused(rule, f"{dataset}@{m.version} is not offered to site {site.name} (rule {rule}: the site "
                            f"hosts up to {site.max_classification}"
                            f"{'' if site.export_cleared else ', not export-controlled content'})")
    try:
        check_pull_purpose(purpose, s)
    except DatalabError:
        raise PolicyRefused("purposes", f"purpose {purpose!r} is not a word of the purpose vocabulary (rule purposes)") from None
    pols = input_policies(m, contracts_mod.load_all(s.contracts_dir))
    for cid, p in pols.items():
        for check in (lambda p=p: p.check_purpose(purpose), lambda p=p: p.check_retention()):
            try:
                check()
            except PolicyRefused as e:
                raise PolicyRefused(e.rule, f"{_first_clause(str(e))} (rule {e.rule}, set by {input_label(cid, s)})") from None
    pol = policy_from_manifest(m)
    try:
        pol.check_purpose(purpose)
        pol.check_retention()
    except PolicyRefused as e:
        raise PolicyRefused(e.rule, f"{_first_clause(str(e))} (rule {e.rule}, set by the combination of the inputs)") from None
    for cid, p in pols.items() if data_moves else ():
        if site.country not in expand_residency(list(p.residency)):
            raise PolicyRefused("residency", f"site {site.name} ({site.country}) is outside the residency "
                                f"{list(p.residency)} (rule residency, set by {input_label(cid, s)})")
    return m


def _first_clause(msg: str) -> str:
    """The policy's message without its own "refused by rule" prefix and "set by <contract>" tail."""
    msg = re.sub(r"^refused by rule '[^']*': ", "", msg)
    return re.split(r";? \(?set by ", msg)[0]


def agreement_for(n: Negotiation, provider_site: str, m: Manifest) -> dict[str, Any]:
    """The ODRL Agreement the provider grants: this version, this purpose, this consumer site."""
    cons: list[dict[str, Any]] = [{"leftOperand": "purpose", "operator": "eq", "rightOperand": n.purpose},
                                  {"leftOperand": "spatial", "operator": "isAnyOf",
                                   "rightOperand": list(m.policy.get("residency") or [])}]
    if m.policy.get("retention_until"):
        cons.append({"leftOperand": "dateTime", "operator": "lteq",
                     "rightOperand": f"{m.policy['retention_until']}T23:59:59Z"})
    return {"@id": f"urn:uuid:{uuid.uuid4()}", "@type": "Agreement",
            "target": dsp.urn("dataset", n.dataset, m.version), "timestamp": now_iso(),
            "assigner": dsp.urn("site", provider_site), "assignee": dsp.urn("site", n.peer),
            "permission": [{"action": "use", "constraint": cons}]}


def parse_target(target: str) -> tuple[str, str]:
    """(dataset, version) of a catalog dataset URN ``urn:datalab:dataset:NAME:VERSION``."""
    parts = target.split(":")
    if len(parts) != 5 or parts[:3] != ["urn", "datalab", "dataset"]:
        raise ValueError(f"offer target {target[:80]!r} is not a dataset of this site's catalog")
    return parts[3], parts[4]
