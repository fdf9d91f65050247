"""Fuzz the HTTP API from its own OpenAPI document (schemathesis): no 500, no traceback, ever.

Every operation of ``/openapi.json`` gets a bounded number of generated
requests, valid ones (the schema's shapes) and invalid ones (schemathesis'
negative mode), sent by a caller of the operation's kind to a real server.
Any 5xx or a body holding a Python traceback fails the test with the
request that caused it. Run and publish are left out: each runs a Dagster
job (their input is a contract or dataset name, covered by the other
operations' parameters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service_harness import Lab, served_copy

pytestmark = pytest.mark.slow
schemathesis = pytest.importorskip("schemathesis", minversion="4")  # dev extra: a missing one is an install error
EXAMPLES = 12  # per operation and mode: ~700 requests, ~30 s on a loaded 2-core machine
SKIP = {("POST", "/v1/admin/run"), ("POST", "/v1/admin/datasets/{name}/publish")}
CALLER = {"providers": "firm-a", "consumers": "team-de", "admin": "admin", "meta": "firm-a"}


@pytest.fixture(scope="module")
def lab(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with served_copy(published_template, tmp_path_factory.mktemp("fuzz")) as lab:
        with lab.as_("admin") as c:
            assert c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=300).status_code == 200
        yield lab


def test_no_operation_answers_500_or_a_traceback(lab: Lab) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    doc = httpx.get(f"{lab.server.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    seen = 0
    auth: dict[str, str] = {}  # the current operation's caller (updated per operation, read by probe)
    for result in schema.get_all_operations():
        op = result.ok()
        if (op.method.upper(), op.path) in SKIP:
            continue
        who = CALLER.get((op.tags or ["meta"])[0], "firm-a")
        auth["Authorization"] = f"Bearer {lab.tokens[who]}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(mode))
            def probe(case: object) -> None:
                nonlocal seen
                r = case.call(base_url=lab.server.url, headers=auth, timeout=60)  # type: ignore[attr-defined]
                seen += 1
                if r.status_code >= 500 or "Traceback (most recent call last)" in r.text:
                    failures.append(f"{case.method} {case.formatted_path} {case.query} -> "  # type: ignore[attr-defined]
                                    f"{r.status_code} {r.text[:300]}")

            with contextlib.suppress(Unsatisfiable):  # negative mode without parameters: nothing to break
                probe()
    assert seen > 200, seen
    assert failures == [], "\n".join(failures[:20])
    assert "Traceback" not in lab.server.log.read_text()
