"""Sovereignty rules enforced at publish, reused by a peer's replication, explained on demand.

``publish`` asks :func:`plan_publish` which inputs a version may combine: the
spec's inputs minus those the spec excludes explicitly (recorded with their
reason), minus withdrawn or expired contracts (their data is gone). The rest
must combine into a policy with a common purpose and residency, and the site
must lie inside every input's residency and host the policy's
classification; otherwise the publish stops with an explanation that names
the input contract and its rule. :func:`check_personal` refuses a version
that would carry a personal column in clear. :func:`explain` shows every
field of a version's effective policy and which input set it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from datalab.config import Settings, settings
from datalab.contracts import purposes as vocab
from datalab.contracts.contract import Contract, read_yaml
from datalab.contracts.datasets import DatasetSpec, Site
from datalab.contracts.policy import (
    CLASSIFICATIONS,
    FIELDS,
    Policy,
    combine,
    expand_residency,
)
from datalab.errors import ContractError, DatalabError, NotFound, PolicyRefused
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest


@dataclass
class PublishPlan:
    """What a version may be built from, and why the rest is left out."""

    inputs: list[str]
    policy: Policy
    exclusions: list[dict[str, str]] = field(default_factory=list)
    spec_purposes: list[str] = field(default_factory=list)
    vocabulary_version: str = ""


def spec_extras(spec: DatasetSpec) -> tuple[list[dict[str, str]], list[str]]:
    """The spec's ``excluded_inputs`` ({contract, reason}) and declared ``purposes``."""
    doc, problems = read_yaml(spec.path)
    doc = doc if isinstance(doc, dict) else {}
    excl = doc.get("excluded_inputs") or []
    out: list[dict[str, str]] = []
    if not isinstance(excl, list):
        problems.append("excluded_inputs: a list of {contract, reason}")
        excl = []
    for i, e in enumerate(excl):
        if not isinstance(e, dict) or e.get("contract") not in spec.inputs or not str(e.get("reason") or "").strip():
            problems.append(f"excluded_inputs[{i}]: needs 'contract' (one of the inputs) and a non-empty 'reason'")
        else:
            out.append({"contract": e["contract"], "reason": str(e["reason"]).strip()})
    purposes = doc.get("purposes") or []
    if not isinstance(purposes, list):
        problems.append("purposes: a list of purpose words")
        purposes = []
    problems += vocab.load().problems(purposes, "purposes")
    if problems:
        raise ContractError(str(spec.path), problems)
    return out, [str(p) for p in purposes]


def explain_fields(policy: Policy) -> list[dict[str, Any]]:
    """One row per policy field: its value and the inputs that set it."""
    d = policy.to_dict()
    return [{"field": f, "value": d[f], "set_by": list(policy.sources.get(f, []))} for f in FIELDS]


def _explanation(policies: dict[str, Policy]) -> str:
    lines = []
    for cid, p in policies.items():
        lines.append(f"  {cid}: residency {list(p.residency)}, purposes {list(p.purposes)}, "
                     f"prohibited {list(p.prohibited_purposes)}, classification {p.classification}")
    return "\n".join(lines)


def _withdrawn_or_expired(c: Contract, s: Settings, today: dt.date) -> str | None:
    from datalab.policy import withdrawals

    w = withdrawals.contract_withdrawal(c.id, s)
    if w is not None:
        return f"contract withdrawn by {w['actor']} at {w['at']}: {w['reason']}"
    if c.policy.retention_until and today > c.policy.retention_until:
        return f"retention_until {c.policy.retention_until} of {c.id} has passed"
    return None


def plan_publish(spec: DatasetSpec, contracts: dict[str, Contract], sites: dict[str, Site],
                 s: Settings | None = None, today: dt.date | None = None) -> PublishPlan:
    """The inputs a new version may combine, its effective policy, and every exclusion.

    Raises :class:`PolicyRefused` with the per-input explanation when the
    remaining inputs cannot be combined or the site is not allowed.
    """
    s = s or settings()
    today = today or dt.date.today()
    v = vocab.load(s.contracts_dir)
    excluded, spec_purposes = spec_extras(spec)
    exclusions = [{"contract": e["contract"], "reason": f"excluded by the dataset spec: {e['reason']}", "by": "spec"} for e in excluded]
    skip = {e["contract"] for e in excluded}
    for cid in spec.inputs:
        if cid in skip:
            continue
        why = _withdrawn_or_expired(contracts[cid], s, today)
        if why:
            exclusions.append({"contract": cid, "reason": why, "by": "retention"})
            skip.add(cid)
    inputs = [c for c in spec.inputs if c not in skip]
    if not inputs:
        raise PolicyRefused("inputs", f"dataset {spec.name}: every input is excluded ({'; '.join(e['contract'] + ': ' + e['reason'] for e in exclusions)})")
    for cid in inputs:
        p = contracts[cid].policy
        for key in ("purposes", "prohibited_purposes"):
            bad = v.unknown(list(getattr(p, key)))
            if bad:
                raise PolicyRefused("purposes", f"input {cid}: {key} {bad} not in the purpose vocabulary v{v.version}")
    pols = {c: contracts[c].policy for c in inputs}
    policy = combine(list(pols.values()))
    if not policy.residency:
        raise PolicyRefused("residency", f"dataset {spec.name}: the inputs' residencies do not overlap; "
                            f"exclude an input in the spec (excluded_inputs) or change the inputs:\n{_explanation(pols)}")
    if not policy.purposes:
        raise PolicyRefused("purposes", f"dataset {spec.name}: the inputs allow no purpose in common; "
                            f"exclude an input in the spec (excluded_inputs) or change the inputs:\n{_explanation(pols)}")
    for sp in spec_purposes:
        try:
            policy.check_purpose(sp)
        except PolicyRefused as e:
            raise PolicyRefused(e.rule, f"dataset {spec.name} declares purpose {sp!r}: {e}") from None
    site = sites.get(spec.site)
    if site is None:
        raise NotFound(f"dataset {spec.name}: unknown site {spec.site!r} (known: {sorted(sites)})")
    check_site(pols, policy, site)
    return PublishPlan(inputs, policy, exclusions, spec_purposes, v.version)


def check_site(pols: dict[str, Policy], policy: Policy, site: Site) -> None:
    """Every input's residency must allow the site; the site must host the classification."""
    for cid, p in pols.items():
        if site.country not in expand_residency(list(p.residency)):
            raise PolicyRefused("residency", f"site '{site.name}' ({site.country}, {site.operator}) is outside "
                                f"the residency {list(p.residency)} of input {cid}")
    if CLASSIFICATIONS.index(policy.classification) > CLASSIFICATIONS.index(site.max_classification):
        who = ", ".join(policy.sources.get("classification", [])) or "the inputs"
        raise PolicyRefused("classification", f"site '{site.name}' hosts data up to '{site.max_classification}', "
                            f"the dataset is '{policy.classification}' (set by {who})")


def check_personal(lf: pl.LazyFrame, inputs: list[str], contracts: dict[str, Contract]) -> list[str]:
    """Refuse if a column classified personal in an input is in clear; returns the checked columns.

    A personal column must be dropped (spec ``drop_columns``) or hold only
    keyed pseudonyms (``ps_`` + HMAC, see :mod:`datalab.policy.pseudonym`). Checked
    on the data, not on the curation record: a contract may have classified a
    column as personal after its deliveries were curated.
    """
    cols = lf.collect_schema()
    checked = []
    for cid in inputs:
        for a in contracts[cid].attributes:
            if not a.personal or a.name not in cols:
                continue
            clear = lf.filter((pl.col("contract_id") == cid) & pl.col(a.name).is_not_null()
                              & ~pl.col(a.name).cast(pl.String).str.contains(r"^ps_[0-9a-f]{16}$")).select(pl.len()).collect(engine="streaming").item()
            if clear:
                raise PolicyRefused("personal_data", f"column '{a.name}' of input {cid} is classified personal and "
                                    f"{clear:,} of its values are in clear; pseudonymise it (re-run curation under the "
                                    f"contract that marks it personal) or drop it (drop_columns in the dataset spec)")
            checked.append(f"{cid}:{a.name}")
    return checked


def policy_from_manifest(m: Manifest) -> Policy:
    pol = Policy.from_dict({k: v for k, v in m.policy.items() if k != "sources"})
    object.__setattr__(pol, "sources", m.policy.get("sources", {}))
    return pol


def explain(name: str, version: str | None, s: Settings | None = None) -> dict[str, Any]:
    """Every field of a version's effective policy, who set it, and the exclusions."""
    from datalab.store.manifests import read_manifest

    s = s or settings()
    m = read_manifest(name, version, s)
    pol = policy_from_manifest(m)
    sov = m.sovereignty
    return {
        "dataset": name, "version": m.version, "status": m.status,
        "site": m.site.to_dict(), "fields": explain_fields(pol),
        "inputs": m.contract_ids,
        "exclusions": sov.get("exclusions", []),
        "purpose_vocabulary": sov.get("purpose_vocabulary"),
        "personal_columns_checked": sov.get("personal_columns_checked", []),
        "withdrawn": m.withdrawn,
    }


def input_policies(m: Manifest, contracts: dict[str, Contract]) -> dict[str, Policy]:
    return {cid: contracts[cid].policy for cid in m.contract_ids if cid in contracts}


def check_pull_purpose(purpose: str, s: Settings | None = None) -> None:
    """A pull's declared purpose must be a word of the vocabulary."""
    s = s or settings()
    vocab.require_all([purpose], "declared purpose", s.contracts_dir)


def render_explain(x: dict[str, Any]) -> str:
    """Plain-text ``policy explain`` output."""
    lines = [f"{x['dataset']}@{x['version']} ({x['status']}), site {x['site']['name']} ({x['site']['country']})",
             f"inputs: {', '.join(x['inputs'])}", ""]
    w = max(len(f["field"]) for f in x["fields"])
    for f in x["fields"]:
        val = f["value"]
        val = ", ".join(map(str, val)) if isinstance(val, list) else str(val)
        lines.append(f"{f['field']:<{w}}  {val or '-':<40}  set by: {', '.join(f['set_by']) or '-'}")
    if x["exclusions"]:
        lines += ["", "excluded inputs:"] + [f"  {e['contract']}: {e['reason']}" for e in x["exclusions"]]
    if x.get("withdrawn"):
        lines += ["", f"WITHDRAWN at {x['withdrawn']['at']}: {x['withdrawn']['reason']}"]
    return "\n".join(lines)


__all__ = ["PublishPlan", "check_personal", "explain", "plan_publish"]


def gate(check: Any, catalog: cat.Catalog, actor: str, name: str, site: str) -> Any:
    """Run a publish-time check; a refusal is audited with its rule, then raised."""
    try:
        return check()
    except DatalabError as e:
        catalog.audit(actor, "publish", name, "refused", {"reason": str(e), "site": site, "rule": getattr(e, "rule", "spec")})
        raise


def manifest_section(plan: PublishPlan, personal: list[str]) -> dict[str, Any]:
    """What the manifest records about the sovereignty decisions of a version."""
    return {
        "inputs": plan.inputs,
        "exclusions": plan.exclusions,
        "spec_purposes": plan.spec_purposes,
        "purpose_vocabulary": plan.vocabulary_version,
        "personal_columns_checked": personal,
    }
