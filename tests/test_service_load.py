"""50 concurrent clients pushing and pulling for a few seconds: no error, every accepted delivery
present with the right checksum (correctness under concurrency; speed is measured in benchmarks/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import PRESS, ROOT, SPINDLE
from tests.service_harness import Lab, sample_file

pytestmark = pytest.mark.slow


def _bench():
    spec = importlib.util.spec_from_file_location("service_load", ROOT / "benchmarks" / "service_load.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["service_load"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_fifty_clients_push_and_pull(served_lab: Lab, tmp_path: Path) -> None:
    bench = _bench()
    bases = {"firm-a": sample_file(SPINDLE, tmp_path, 100, 7, "a.csv").read_bytes(),
             "firm-b": sample_file(PRESS, tmp_path, 100, 8, "b.csv").read_bytes()}
    stats = bench.run_load(served_lab.server.url, served_lab.tokens, bases, seconds=5, clients=50)
    problems = bench.verify(served_lab.server.url, served_lab.tokens, served_lab.home, stats)
    out = bench.summary(stats, 5, problems)
    assert out["errors"] == 0, out["error_samples"]
    assert problems == []
    assert out["per_operation"]["push"]["count"] > 0 and out["per_operation"]["pull-file"]["count"] > 0, out
    assert out["accepted_deliveries"] == out["per_operation"]["push"]["count"]
    with served_lab.as_("admin") as c:
        assert c.get("/v1/admin/audit/verify").json()["ok"]
