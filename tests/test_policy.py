"""Sovereignty policies combine as DESIGN.md says and never grow more permissive."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datalab.contracts.policy import (
    CLASSIFICATIONS,
    EU,
    Policy,
    combine,
    expand_residency,
    purpose_allowed,
)
from datalab.errors import PolicyRefused


def test_combination_rules() -> None:
    a = Policy.from_dict({"residency": ["DE"], "purposes": ["research", "model-training"], "classification": "confidential",
                          "license": "A", "retention_until": "2031-12-31"}, "A")
    b = Policy.from_dict({"residency": ["EU"], "purposes": ["research"], "prohibited_purposes": ["model-training"],
                          "personal_data": True, "license": "B", "retention_until": "2029-06-30"}, "B")
    p = combine([a, b])
    assert p.residency == ("DE",)
    assert p.purposes == ("research",)
    assert p.prohibited_purposes == ("model-training",)
    assert p.classification == "confidential" and p.personal_data and not p.export_control
    assert p.license == ("A", "B") and p.retention_until == dt.date(2029, 6, 30)
    assert p.sources["prohibited_purposes"] == ["B"] and p.sources["retention_until"] == ["B"]
    with pytest.raises(PolicyRefused, match=r"prohibited.*set by B"):
        p.check_purpose("model-training")
    p.check_purpose("research")


def test_purpose_hierarchy() -> None:
    assert purpose_allowed("model-training.fine-tuning", ["model-training"], [])[0]
    assert not purpose_allowed("model-training", ["model-training.fine-tuning"], [])[0]
    assert not purpose_allowed("research.x", ["research"], ["research"])[0]


def test_site_outside_residency_names_rule() -> None:
    p = Policy.from_dict({"residency": ["EU"], "purposes": ["research"]}, "C")
    p.check_site("munich", "DE")
    with pytest.raises(PolicyRefused, match=r"residency.*virginia"):
        p.check_site("virginia", "US")


def test_regions() -> None:
    assert expand_residency(["EU"]) == EU and "NO" in expand_residency(["EEA"]) and "NO" not in EU


COUNTRY = st.sampled_from(["DE", "FR", "FI", "NO", "US", "EU", "EEA", "CH"])
PURPOSE = st.sampled_from(["research", "model-training", "predictive-maintenance", "benchmarking", "model-training.fine-tuning"])
POLICIES = st.builds(
    lambda r, p, x, c, pd, ec, d: Policy.from_dict({
        "residency": r, "purposes": p, "prohibited_purposes": x, "classification": c,
        "personal_data": pd, "export_control": ec, "retention_until": d}, "x"),
    st.lists(COUNTRY, min_size=1, max_size=3), st.lists(PURPOSE, min_size=1, max_size=3),
    st.lists(PURPOSE, max_size=2), st.sampled_from(CLASSIFICATIONS), st.booleans(), st.booleans(),
    st.one_of(st.none(), st.dates(dt.date(2026, 1, 1), dt.date(2040, 1, 1))),
)


def _key(p: Policy) -> tuple:
    return (expand_residency(list(p.residency)), frozenset(p.purposes), frozenset(p.prohibited_purposes),
            p.classification, p.retention_until, p.personal_data, p.export_control)


@settings(max_examples=150, deadline=None)
@given(st.lists(POLICIES, min_size=1, max_size=4), st.randoms())
def test_combine_commutative(ps: list[Policy], rnd) -> None:
    shuffled = ps[:]
    rnd.shuffle(shuffled)
    assert _key(combine(ps)) == _key(combine(shuffled))


@settings(max_examples=150, deadline=None)
@given(POLICIES, POLICIES, POLICIES)
def test_combine_associative(a: Policy, b: Policy, c: Policy) -> None:
    assert _key(combine([combine([a, b]), c])) == _key(combine([a, combine([b, c])]))


@settings(max_examples=200, deadline=None)
@given(st.lists(POLICIES, min_size=1, max_size=4), PURPOSE, COUNTRY.filter(lambda c: len(c) == 2))
def test_never_more_permissive_than_any_input(ps: list[Policy], purpose: str, country: str) -> None:
    p = combine(ps)
    if purpose_allowed(purpose, list(p.purposes), list(p.prohibited_purposes))[0]:
        assert all(purpose_allowed(purpose, list(x.purposes), list(x.prohibited_purposes))[0] for x in ps)
    if country in expand_residency(list(p.residency)):
        assert all(country in expand_residency(list(x.residency)) for x in ps)
    assert all(CLASSIFICATIONS.index(p.classification) >= CLASSIFICATIONS.index(x.classification) for x in ps)
    dates = [x.retention_until for x in ps if x.retention_until]
    assert p.retention_until == (min(dates) if dates else None)
