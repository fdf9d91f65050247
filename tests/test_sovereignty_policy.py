"""Property tests of policy combination over the lab's real purpose vocabulary and sites.

Combining is associative and commutative and never more permissive than any
input, for every purpose of the vocabulary (with its isPartOf hierarchy),
every country and every site; the attribution of each field names inputs
that really constrain it. Plus the vocabulary's own checks.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datalab.contracts import datasets, purposes
from datalab.contracts.policy import (
    CLASSIFICATIONS,
    COUNTRIES,
    Policy,
    combine,
    expand_residency,
    meet_purposes,
    purpose_allowed,
)
from datalab.errors import ContractError, PolicyRefused
from datalab.policy.sovereignty import check_site
from tests.conftest import ROOT

VOCAB = purposes.load(ROOT / "data_contracts")
WORDS = sorted(VOCAB.parents)
SITES = datasets.load_sites(ROOT / "data_contracts")
PLACES = [*sorted(COUNTRIES), "EU", "EEA"]

POLICIES = st.builds(
    lambda i, r, p, x, c, pd, ec, d: Policy.from_dict({
        "residency": r, "purposes": p, "prohibited_purposes": x, "classification": c,
        "personal_data": pd, "export_control": ec, "retention_until": d}, f"urn:test:{i}"),
    st.integers(0, 10_000), st.lists(st.sampled_from(PLACES), min_size=1, max_size=3),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), st.lists(st.sampled_from(WORDS), max_size=2),
    st.sampled_from(CLASSIFICATIONS), st.booleans(), st.booleans(),
    st.one_of(st.none(), st.dates(dt.date(2026, 1, 1), dt.date(2040, 1, 1))),
)


def _key(p: Policy) -> tuple:
    return (expand_residency(list(p.residency)), frozenset(p.purposes), frozenset(p.prohibited_purposes),
            p.classification, p.retention_until, frozenset(p.license), p.personal_data, p.export_control)


def _allows(p: Policy, purpose: str) -> bool:
    return purpose_allowed(purpose, list(p.purposes), list(p.prohibited_purposes))[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(POLICIES, min_size=1, max_size=5), st.randoms())
def test_combine_is_commutative(ps: list[Policy], rnd) -> None:
    shuffled = ps[:]
    rnd.shuffle(shuffled)
    assert _key(combine(ps)) == _key(combine(shuffled))


@settings(max_examples=60, deadline=None)
@given(POLICIES, POLICIES, POLICIES)
def test_combine_is_associative(a: Policy, b: Policy, c: Policy) -> None:
    assert _key(combine([combine([a, b]), c])) == _key(combine([a, combine([b, c])])) == _key(combine([a, b, c]))


@settings(max_examples=60, deadline=None)
@given(st.lists(POLICIES, min_size=1, max_size=5))
def test_never_more_permissive_than_any_input(ps: list[Policy]) -> None:
    p = combine(ps)
    for word in WORDS:
        if _allows(p, word):
            assert all(_allows(x, word) for x in ps), word
    for country in COUNTRIES:
        if country in expand_residency(list(p.residency)):
            assert all(country in expand_residency(list(x.residency)) for x in ps)
    pols = {f"in{i}": x for i, x in enumerate(ps)}
    for site in SITES.values():
        try:
            check_site(pols, p, site)
        except PolicyRefused:
            continue
        # the site is allowed for the combination: so for every input alone
        for x in ps:
            check_site({"x": x}, x, site)
    assert all(CLASSIFICATIONS.index(p.classification) >= CLASSIFICATIONS.index(x.classification) for x in ps)
    assert set(p.prohibited_purposes) >= {w for x in ps for w in x.prohibited_purposes}
    dates = [x.retention_until for x in ps if x.retention_until]
    assert p.retention_until == (min(dates) if dates else None)
    assert p.personal_data == any(x.personal_data for x in ps) and p.export_control == any(x.export_control for x in ps)


@settings(max_examples=60, deadline=None)
@given(st.lists(POLICIES, min_size=2, max_size=4, unique_by=lambda p: p.sources["residency"][0]))
def test_attribution_names_inputs_that_constrain(ps: list[Policy]) -> None:
    p = combine(ps)
    ids = {x.sources["residency"][0] for x in ps}
    for f, who in p.sources.items():
        assert set(who) <= ids, f
    # leaving out an input named for residency widens the residency (unless all are named)
    if len(p.sources["residency"]) < len(ps):
        for x in ps:
            if x.sources["residency"][0] in p.sources["residency"]:
                rest = [y for y in ps if y is not x]
                assert expand_residency(list(combine(rest).residency)) > expand_residency(list(p.residency))


def test_hierarchy_meets_in_the_more_specific_purpose() -> None:
    assert meet_purposes([["model-training"], ["model-training.fine-tuning", "research"]], []) == {"model-training.fine-tuning"}
    assert meet_purposes([["model-training"], ["model-training"]], ["model-training.foundation-model"]) == {"model-training"}
    a = Policy.from_dict({"residency": ["EU"], "purposes": ["model-training"]}, "A")
    b = Policy.from_dict({"residency": ["DE"], "purposes": ["model-training.fine-tuning"], "prohibited_purposes": ["research"]}, "B")
    c = combine([a, b])
    assert c.purposes == ("model-training.fine-tuning",) and c.sources["purposes"] == ["B"] and c.sources["residency"] == ["B"]
    assert VOCAB.is_part_of("model-training.fine-tuning", "model-training")
    assert not VOCAB.is_part_of("model-training", "model-training.fine-tuning")
    assert VOCAB.lineage("predictive-maintenance.anomaly-detection") == ["predictive-maintenance.anomaly-detection", "predictive-maintenance"]


def test_unknown_purpose_names_word_and_vocabulary_version() -> None:
    with pytest.raises(PolicyRefused, match=r"'ml-training' is not in the purpose vocabulary v1\.2\.0 \(purposes\.yaml\)"):
        VOCAB.require("ml-training")
    assert VOCAB.problems(["research", "trainig"], "x.purposes") == [
        "x.purposes[1]: unknown purpose 'trainig' (purpose vocabulary v1.2.0, purposes.yaml)"]


@pytest.mark.parametrize(("text", "problem"), [
    ("version: 1.0.0\npurposes:\n  - {name: a}\n  - {name: a}\n", "'a' is listed twice"),
    ("version: 1.0.0\npurposes:\n  - {name: a.b, isPartOf: a}\n", "'a.b' is part of 'a', which is not defined"),
    ("version: 1.0.0\npurposes:\n  - {name: a}\n  - {name: a.b, isPartOf: c}\n", "must be part of 'a' (its dotted prefix), not 'c'"),
    ("purposes:\n  - {name: a}\n", "version: required"),
    ("version: 1.0.0\npurposes: []\n", "purposes: a non-empty list"),
    ("- just a list\n", "must be a mapping"),
    ("version: [1\n", ""),
])
def test_vocabulary_file_problems(tmp_path: Path, text: str, problem: str) -> None:
    f = tmp_path / "purposes.yaml"
    f.write_text(text)
    with pytest.raises(ContractError) as e:
        purposes.parse(f)
    assert problem in str(e.value) and str(f) in str(e.value)


def test_sites_carry_region_country_operator_and_one_is_outside_the_eu() -> None:
    assert {s.country for s in SITES.values()} >= {"DE", "FI", "US"}
    assert all(s.region and s.operator for s in SITES.values())
    assert any(s.country not in expand_residency(["EU"]) for s in SITES.values())


@pytest.mark.parametrize(("sites", "problem"), [
    ("sites:\n  - {name: x, country: DE, max_classification: secret}\n", "sites[0].max_classification: one of"),
    ("sites:\n  - {name: x, country: XX}\n", "sites[0]: needs a name and an ISO 3166 country"),
    ("sites: [\n", ""),
    ("sites:\n  - {name: ../etc, country: DE}\n", "sites[0].name: site name '../etc' is not allowed in a path"),
])
def test_bad_sites_file_is_an_error_naming_the_entry(tmp_path: Path, sites: str, problem: str) -> None:
    (tmp_path / "sites.yaml").write_text(sites)
    with pytest.raises(ContractError) as e:
        datasets.load_sites(tmp_path)
    assert "sites.yaml" in str(e.value) and problem in str(e.value)


@pytest.mark.parametrize(("extra", "problem"), [
    ({"excluded_inputs": [{"contract": "urn:nope"}]}, "excluded_inputs[0]: needs 'contract' (one of the inputs) and a non-empty 'reason'"),
    ({"excluded_inputs": "all"}, "excluded_inputs: a list of {contract, reason}"),
    ({"purposes": ["research", "training"]}, "purposes[1]: unknown purpose 'training' (purpose vocabulary v1.2.0"),
    ({"purposes": "research"}, "purposes: a list of purpose words"),
])
def test_bad_spec_sovereignty_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict, problem: str) -> None:
    import yaml

    from datalab.contracts.datasets import DatasetSpec
    from datalab.policy.sovereignty import spec_extras

    monkeypatch.setenv("DATALAB_CONTRACTS", str(ROOT / "data_contracts"))
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "site": "munich", "inputs": ["urn:a"], **extra}))
    spec = DatasetSpec("x", "x", "", "munich", ("urn:a",), (), f)
    with pytest.raises(ContractError) as e:
        spec_extras(spec)
    assert problem in str(e.value) and str(f) in str(e.value)
