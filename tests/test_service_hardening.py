"""Issue 17: the service's input is bounded and its policy holds on every path.

Each test here reproduces one finding of the hostile-client probe against
the real server (``datalab serve`` in a subprocess) and failed before the fix.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from datalab import readers
from tests.service_harness import Lab, served_copy

pytestmark = pytest.mark.slow
SPINDLE_PUSH = "/v1/provider/contracts/spindle-telemetry/deliveries"


@pytest.fixture(scope="module")
def lab(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with served_copy(published_template, tmp_path_factory.mktemp("hardening")) as lab:
        yield lab


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MB: what the kernel saw, not what Python thinks."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _gzip_one_line(mib: int) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as z:
        chunk = b"a" * (1 << 20)
        for _ in range(mib):
            z.write(chunk)
    return buf.getvalue()


@pytest.mark.parametrize("header", [False, True], ids=["header-line", "body-line"])
def test_one_endless_line_costs_bounded_memory_database_and_answer(lab: Lab, header: bool) -> None:
    """Item 1: a small gzip of one 96 MiB line is rejected by its line number; memory, catalog and
    answer stay bounded (before: the line was read whole, copied into the reasons twice and returned)."""
    body = _gzip_one_line(96)
    if header:  # a good header, then the endless line
        good = b"machine_id,ts,sensor,value,unit\n"
        body = gzip.compress(good, compresslevel=1) + body  # concatenated gzip members are one stream
    assert len(body) < 1 << 20
    db = lab.home / "catalog.db"
    db_before = db.stat().st_size
    pid = lab.server.proc.pid  # one worker: uvicorn serves in this process
    rss_before = _peak_rss_mb(pid)
    with lab.as_("firm-a") as c:
        r = c.post(SPINDLE_PUSH, content=body, params={"name": "line96m.csv.gz"},
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text[:500]
        assert len(r.content) < 64 << 10, len(r.content)
        rec = r.json()
        assert rec["status"] == "rejected"
        line = 2 if header else 1
        want = f"line {line} is longer than {readers.MAX_LINE_BYTES} bytes"
        assert any(want in why for why in rec["reasons"]), rec["reasons"]
        listing = c.get("/v1/provider/receipts")
        assert listing.status_code == 200 and len(listing.content) < 1 << 20
    assert db.stat().st_size - db_before < 1 << 20
    grew = _peak_rss_mb(pid) - rss_before
    assert grew < 200, f"peak RSS grew by {grew:.0f} MB"


def test_reasons_are_bounded_in_number_and_length() -> None:
    from datalab import landing

    many = [f"r{i} " + "x" * 5000 for i in range(250)]
    out = landing.bound_reasons(many)
    assert len(out) == landing.MAX_REASONS + 1 and out[-1] == "and 150 more"
    assert all(len(r) < readers.MAX_REASON_CHARS + 50 for r in out)
    assert "more characters" in out[0]


def test_receipt_lists_are_paginated(lab: Lab) -> None:
    with lab.as_("firm-a") as c:
        everything = c.get("/v1/provider/receipts", params={"limit": 1000}).json()
        assert len(everything) >= 2
        page = c.get("/v1/provider/receipts", params={"limit": 1, "offset": 1}).json()
        assert [r["delivery_id"] for r in page] == [everything[1]["delivery_id"]]
        assert c.get("/v1/provider/receipts", params={"limit": 100_000}).status_code == 422
