"""Sovereignty policies: what a firm allows, and how inputs combine.

Kept small and explicit (after ODRL usage policies as used by IDS / EDC and
Catena-X). A dataset's effective policy is the combination of its inputs'
policies, and every field records which input set it, so a refusal can name
the rule and the input that caused it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from datalab.errors import PolicyRefused

EU = frozenset(
    ["AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "IE", "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"]
)
EEA = EU | {"IS", "LI", "NO"}
REGIONS: dict[str, frozenset[str]] = {"EU": EU, "EEA": frozenset(EEA)}
# ISO 3166-1 alpha-2 codes the lab accepts for residency and sites.
COUNTRIES = frozenset(EEA | {"CH", "GB", "US", "CA", "JP", "KR", "SG", "IN", "CN", "BR", "AU"})

CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
FIELDS = (
    "residency",
    "purposes",
    "prohibited_purposes",
    "classification",
    "license",
    "retention_until",
    "personal_data",
    "export_control",
)


def expand_residency(codes: list[str]) -> frozenset[str]:
    """Country codes covered by a residency list (regions expanded)."""
    out: set[str] = set()
    for c in codes:
        out |= REGIONS.get(c, {c})
    return frozenset(out)


def compress_residency(countries: frozenset[str]) -> list[str]:
    """Show a country set the way people write it: EEA or EU where whole."""
    if countries == REGIONS["EEA"]:
        return ["EEA"]
    if countries == EU:
        return ["EU"]
    if REGIONS["EEA"] <= countries:
        return ["EEA", *sorted(countries - REGIONS["EEA"])]
    if countries >= EU:
        return ["EU", *sorted(countries - EU)]
    return sorted(countries)


def purpose_allowed(purpose: str, allowed: list[str], prohibited: list[str]) -> tuple[bool, str]:
    """Is ``purpose`` allowed? Purposes form a dotted hierarchy.

    ``model-training.fine-tuning`` is part of ``model-training``: allowing the
    parent allows the child; prohibiting the parent prohibits the child.
    Returns (allowed, reason).
    """
    lineage = [".".join(purpose.split(".")[: i + 1]) for i in range(purpose.count(".") + 1)]
    for p in lineage:
        if p in prohibited:
            return False, f"purpose '{purpose}' is prohibited ('{p}' in prohibited_purposes)"
    if any(p in allowed for p in lineage):
        return True, "allowed"
    return False, f"purpose '{purpose}' is not among the allowed purposes {sorted(allowed)}"


def _lineage(purpose: str) -> list[str]:
    parts = purpose.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def meet_purposes(allowed: list[list[str]], prohibited: list[str]) -> set[str]:
    """The purposes every list allows, with the hierarchy (ODRL isPartOf).

    A purpose is allowed by a list if it or a purpose it is part of is in the
    list, so ``model-training`` and ``model-training.fine-tuning`` meet in
    ``model-training.fine-tuning``. Candidates come from the lists themselves;
    prohibited purposes (and their parts) are removed; a purpose whose parent
    is also kept is redundant and dropped, so the result is canonical (which
    makes combining associative and commutative).
    """
    if not allowed:
        return set()
    sets = [set(a) for a in allowed]
    cands = set().union(*sets)
    kept = {x for x in cands
            if all(any(y in a for y in _lineage(x)) for a in sets)
            and not any(y in prohibited for y in _lineage(x))}
    return {x for x in kept if not any(y in kept for y in _lineage(x)[:-1])}


@dataclass(frozen=True)
class Policy:
    """One input's (or a combination's) sovereignty policy."""

    residency: tuple[str, ...]
    purposes: tuple[str, ...]
    prohibited_purposes: tuple[str, ...] = ()
    classification: str = "internal"
    license: tuple[str, ...] = ()
    retention_until: dt.date | None = None
    personal_data: bool = False
    export_control: bool = False
    # field -> list of inputs (contract ids) that set it; filled by combine().
    sources: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "") -> Policy:
        lic = d.get("license") or []
        lic = [lic] if isinstance(lic, str) else list(lic)
        ret = d.get("retention_until")
        if isinstance(ret, str):
            ret = dt.date.fromisoformat(ret)
        p = cls(
            residency=tuple(d.get("residency") or ()),
            purposes=tuple(d.get("purposes") or ()),
            prohibited_purposes=tuple(d.get("prohibited_purposes") or ()),
            classification=d.get("classification", "internal"),
            license=tuple(lic),
            retention_until=ret,
            personal_data=bool(d.get("personal_data", False)),
            export_control=bool(d.get("export_control", False)),
            sources={f: [source] for f in FIELDS} if source else {},
        )
        return p

    def to_dict(self) -> dict[str, Any]:
        return {
            "residency": list(self.residency),
            "purposes": list(self.purposes),
            "prohibited_purposes": list(self.prohibited_purposes),
            "classification": self.classification,
            "license": list(self.license),
            "retention_until": self.retention_until.isoformat() if self.retention_until else None,
            "personal_data": self.personal_data,
            "export_control": self.export_control,
            "sources": self.sources,
        }

    def check_purpose(self, purpose: str) -> None:
        ok, reason = purpose_allowed(purpose, list(self.purposes), list(self.prohibited_purposes))
        if not ok:
            rule = "prohibited_purposes" if "prohibited" in reason else "purposes"
            who = ", ".join(self.sources.get(rule, [])) or "the dataset policy"
            raise PolicyRefused(rule, f"{reason}; set by {who}")

    def check_site(self, site: str, country: str) -> None:
        if country not in expand_residency(list(self.residency)):
            who = ", ".join(self.sources.get("residency", [])) or "the dataset policy"
            raise PolicyRefused(
                "residency",
                f"site '{site}' ({country}) is outside the allowed residency "
                f"{list(self.residency)} set by {who}",
            )

    def check_retention(self, today: dt.date | None = None) -> None:
        today = today or dt.date.today()
        if self.retention_until and today > self.retention_until:
            who = ", ".join(self.sources.get("retention_until", [])) or "the dataset policy"
            raise PolicyRefused(
                "retention_until",
                f"the data had to be deleted after {self.retention_until} (set by {who})",
            )


def combine(policies: list[Policy]) -> Policy:
    """Combine input policies as DESIGN.md says, never more permissive than any.

    residency and purposes intersect, prohibited purposes unite,
    classification takes the maximum, licences accumulate, retention takes
    the earliest date, personal_data and export_control are true if any is.
    Each field remembers which inputs set it (for ``policy explain``).
    """
    if not policies:
        raise ValueError("no input policies to combine")
    res = expand_residency(list(policies[0].residency))
    for p in policies[1:]:
        res &= expand_residency(list(p.residency))
    prohibited = sorted({x for p in policies for x in p.prohibited_purposes})
    purposes = meet_purposes([list(p.purposes) for p in policies], prohibited)
    cls_rank = max(CLASSIFICATIONS.index(p.classification) for p in policies)
    licenses = sorted({x for p in policies for x in p.license})
    dates = [p.retention_until for p in policies if p.retention_until]
    retention = min(dates) if dates else None

    def who(pred: Any) -> list[str]:
        return sorted({s for p in policies if pred(p) for s in p.sources.get("residency", [])})

    def narrows_residency(p: Policy) -> bool:
        # p set the residency if leaving it out would widen the result.
        others = [expand_residency(list(q.residency)) for q in policies if q is not p]
        return not others or frozenset.intersection(*others) != res

    def narrows_purposes(p: Policy) -> bool:
        others = [list(q.purposes) for q in policies if q is not p]
        return not others or meet_purposes(others, prohibited) != purposes

    sources = {
        "residency": who(narrows_residency) or who(lambda p: True),
        "purposes": who(narrows_purposes) or who(lambda p: True),
        "prohibited_purposes": who(lambda p: bool(p.prohibited_purposes)),
        "classification": who(lambda p: CLASSIFICATIONS.index(p.classification) == cls_rank),
        "license": who(lambda p: bool(p.license)),
        "retention_until": who(lambda p: p.retention_until == retention and retention is not None),
        "personal_data": who(lambda p: p.personal_data),
        "export_control": who(lambda p: p.export_control),
    }
    return Policy(
        residency=tuple(compress_residency(frozenset(res))),
        purposes=tuple(sorted(purposes)),
        prohibited_purposes=tuple(prohibited),
        classification=CLASSIFICATIONS[cls_rank],
        license=tuple(licenses),
        retention_until=retention,
        personal_data=any(p.personal_data for p in policies),
        export_control=any(p.export_control for p in policies),
        sources=sources,
    )


def policy_words(p: dict[str, Any]) -> list[str]:
    """A usage policy (``Policy.to_dict()``, as a manifest stores it) as the Markdown list a card shows.

    One wording for every card of a version: the datasheet of a time series
    and the card of a kind without row facts (``datalab.store.card``, the
    CAD card) rendered the policy twice and said different things (one
    named who set a rule, the other did not), and a reader who sees two
    wordings of one policy asks which one holds. Each rule names the inputs
    that set it (``sources``, filled by :func:`combine`), so an auditor can
    follow it back to a contract.
    """
    sources: dict[str, list[str]] = p.get("sources") or {}

    def set_by(rule: str) -> str:
        return f" (set by {', '.join(sources.get(rule) or []) or '-'})"

    out = [f"- **Where**: stored and processed only in {', '.join(p['residency'])}{set_by('residency')}.",
           f"- **Allowed purposes**: {', '.join(p['purposes']) or 'none'} (and the purposes that are part of them)."]
    if p["prohibited_purposes"]:
        out.append(f"- **Never for**: {', '.join(p['prohibited_purposes'])}{set_by('prohibited_purposes')}.")
    out.append(f"- **Classification**: {p['classification']}.")
    out.append(f"- **Licences to honour**: {', '.join(p['license']) or 'none stated'}.")
    if p.get("retention_until"):
        out.append(f"- **Deleted after**: {p['retention_until']}; the version is withdrawn then and pulls are refused.")
    if p["personal_data"]:
        out.append("- **Personal data**: present at the source; personal columns are pseudonymised "
                   "(keyed HMAC, key kept by the lab) or dropped.")
    if p["export_control"]:
        out.append("- **Export control**: dual-use / export-controlled content.")
    return out
