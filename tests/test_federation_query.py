"""Compute-to-data between real sites (issue 18 item 5): kajaani (FI) may not receive plant-telemetry
(residency DE) but may ask munich declared aggregations of it; groups under k rows never leave."""

from __future__ import annotations

import json

import polars as pl
import pytest

from datalab.federation.client import PeerError, query
from datalab.federation.query import QueryRefused
from tests.federation_harness import Site
from tests.test_federation import audit_of


def frame(a: Site) -> pl.DataFrame:
    m = json.loads((a.home / "versions" / "plant-telemetry" / "1.0.0" / "manifest.json").read_text())
    return pl.read_parquet([str(a.home / f["path"]) for f in m["files"]])


def ask(site: Site, group_by: str, agg: str, purpose: str = "research") -> dict:
    with site.here():
        return query("munich", "plant-telemetry@1.0.0", purpose, group_by, agg)


def test_aggregate_answer_matches_the_data_and_is_audited_at_both_sites(federation: dict[str, Site]) -> None:
    a, c = federation["munich"], federation["kajaani"]
    res = ask(c, "entity,sensor", "mean(value),count()")
    want = frame(a).group_by("entity", "sensor").agg(pl.col("value").mean(), pl.len()).sort("entity", "sensor")
    assert [(r["entity"], r["sensor"], r["count()"]) for r in res["groups"]] == list(zip(want["entity"], want["sensor"], want["len"], strict=True))
    assert [r["mean(value)"] for r in res["groups"]] == pytest.approx(want["value"].to_list())
    assert res["k"] == 10 and res["suppressed_groups"] == 0
    [pa] = [e for e in audit_of(a, "dsp.query") if e["detail"].get("result_sha256") == res["result_sha256"]]
    [pc] = [e for e in audit_of(c, "dsp.query") if e["detail"].get("result_sha256") == res["result_sha256"]]
    assert pa["actor"] == "site:kajaani" and pa["detail"]["rows_scanned"] == 600 == pc["detail"]["rows_scanned"]


def test_groups_under_k_are_suppressed_and_counted(federation: dict[str, Site]) -> None:
    c = federation["kajaani"]
    ten = ask(c, "entity,sensor,time:10s", "mean(value),count()")  # 10 readings per group: exactly k
    assert ten["groups"] and all(r["count()"] >= 10 for r in ten["groups"]) and ten["suppressed_groups"] == 0
    five = ask(c, "entity,sensor,time:5s", "mean(value),count()")  # 5 per group: all below k
    assert five["groups"] == [] and five["suppressed_groups"] == 120 and "fewer than 10" in five["why_suppressed"]


@pytest.mark.parametrize(("group_by", "agg", "why"), [
    ("entity,sensor,time:1s", "mean(value)", "fewer than 10"),  # one reading per group: single rows
    ("entity,time:1ms", "sum(value)", "narrower than the data's resolution"),  # a bucket below the resolution
    ("delivery_id,entity,sensor,time:1s", "count()", "fewer than 10"),  # grouping by key-like columns
])
def test_single_row_extraction_returns_only_suppressed_groups(federation: dict[str, Site], group_by: str, agg: str, why: str) -> None:
    res = ask(federation["kajaani"], group_by, agg)
    assert res["groups"] == [] and res["suppressed_groups"] > 0 and why in res["why_suppressed"]


@pytest.mark.parametrize(("group_by", "agg", "err", "match"), [
    ("entity", "max(value)", QueryRefused, "single row's value"),
    ("entity", "value", QueryRefused, "not a declared aggregation"),
    ("entity", "__import__('os').system('id')", QueryRefused, "not a declared aggregation"),
    ("time", "count()", PeerError, "through a time bucket"),
    ("entity", "mean(entity)", PeerError, "not numeric"),
    ("nope", "count()", PeerError, "not in plant-telemetry"),
])
def test_undeclared_queries_are_refused(federation: dict[str, Site], group_by: str, agg: str, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        ask(federation["kajaani"], group_by, agg)


def test_policy_still_applies_to_queries(federation: dict[str, Site]) -> None:
    a, c = federation["munich"], federation["kajaani"]
    with pytest.raises(PeerError, match="rule prohibited_purposes"):
        ask(c, "entity", "count()", purpose="model-training")
    assert audit_of(a, "dsp.query")[-1]["decision"] == "refused"
