"""SIGKILL the server in the middle of uploads and of publishes, restart it, and check that
every receipt is complete or absent, every version is complete or absent, the catalog and the
audit chain verify, and retried work finishes without duplicates.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from datalab.client import Client
from datalab.config import settings
from datalab.intake import landing
from datalab.store import catalog as cat
from tests.conftest import PRESS, SPINDLE
from tests.service_harness import Lab, sample_file, served_copy, use_lab

pytestmark = pytest.mark.slow
PUSH = "/v1/provider/contracts/press-line/deliveries"  # firm-b; runs only touch the spindle contract


@pytest.fixture(scope="module")
def lab(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with served_copy(published_template, tmp_path_factory.mktemp("crash")) as lab:
        yield lab


def _check_consistent(lab: Lab) -> list[landing.Receipt]:
    """Invariants after a crash: catalog intact, chain intact, receipts complete, versions complete."""
    with use_lab(lab.home, lab.contracts):
        s = settings()
        c = cat.Catalog(s.catalog_url)
        with c.begin() as conn:
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
        assert c.verify_audit() == []
        recs = landing.list_receipts()
        for r in recs:
            assert r.files, f"{r.delivery_id}: a receipt without files"
            stored = landing.stored_files(r.delivery_id)
            assert len(stored) == len(r.files)
            for _, path, sha in stored:
                assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
            # every receipt's push is in the audit log (same transaction)
            assert c.audit_entries(action="push", subject=r.delivery_id)
        with c.begin() as conn:
            versions = conn.execute(sa.select(cat.dataset_versions)).all()
        for v in versions:
            m = json.loads((s.home / v.manifest_path).read_text())
            for f in m["files"]:
                assert hashlib.sha256((s.home / f["path"]).read_bytes()).hexdigest() == f["sha256"]
            assert pl.read_parquet([s.home / f["path"] for f in m["files"]]).height == m["rows"]
    assert not [p for p in (lab.home / "staging").rglob("*") if p.is_file()]
    return recs


def _slow_body(data: bytes, boundary: str, name: str, delay: float) -> Iterator[bytes]:
    yield f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n".encode()
    for i in range(0, len(data), 16 << 10):
        yield data[i:i + (16 << 10)]
        time.sleep(delay)
    yield f"\r\n--{boundary}--\r\n".encode()


def test_kill_during_uploads(lab: Lab, tmp_path: Path) -> None:
    files = [sample_file(PRESS, tmp_path, 2500 + 200 * i, 100 + i) for i in range(6)]
    results: dict[int, int | str] = {}

    def push(i: int, slow: bool) -> None:
        data = files[i].read_bytes()
        try:
            with lab.as_("firm-b") as c:
                if slow:
                    r = c.post(PUSH, content=_slow_body(data, "B0UNDARY", files[i].name, 0.1),
                               headers={"Content-Type": "multipart/form-data; boundary=B0UNDARY",
                                        "Idempotency-Key": f"crash-{i}"})
                else:
                    r = c.post(PUSH, files=[("file", (files[i].name, data, "text/csv"))],
                               headers={"Idempotency-Key": f"crash-{i}"})
                results[i] = r.status_code
        except Exception as e:  # the server died under us: expected for some
            results[i] = type(e).__name__

    threads = [threading.Thread(target=push, args=(i, i % 2 == 0)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.6)  # fast pushes are landing or done, slow ones are mid-body
    lab.server.kill()
    for t in threads:
        t.join(30)
    assert any(isinstance(v, str) for v in results.values()), results  # some really were cut off
    lab.server.start()
    before = _check_consistent(lab)
    # the firm retries every push with its key: each ends with exactly one receipt, none twice
    client = Client(lab.server.url, lab.tokens["firm-b"])
    recs = [client.push("press-line", [files[i]], idempotency_key=f"crash-{i}") for i in range(6)]
    client.close()
    assert all(r.accepted for r in recs)
    after = _check_consistent(lab)
    shas = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    landed = [r for r in after if r.files[0].sha256 in shas]
    assert len(landed) == 6 and len({r.delivery_id for r in landed}) == 6
    # what was complete before the retry kept its delivery id
    done_before = {r.files[0].sha256: r.delivery_id for r in before if r.files[0].sha256 in shas}
    assert all(done_before[r.files[0].sha256] == r.delivery_id for r in landed if r.files[0].sha256 in done_before)


def _watch_and_kill(lab: Lab, pattern: str, count: int, timeout: float = 120.0) -> bool:
    """Kill the server as soon as ``count`` new files matching ``pattern`` appear under the warehouse."""
    wh = lab.home / "warehouse"
    seen = set(wh.rglob(pattern)) if wh.exists() else set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wh.exists() and len(set(wh.rglob(pattern)) - seen) >= count:
            lab.server.kill()
            return True
        time.sleep(0.005)
    return False


def _publish_killed(lab: Lab, pattern: str, count: int = 1) -> None:
    out: dict[str, object] = {}

    def go() -> None:
        try:
            with lab.as_("admin") as c:
                out["r"] = c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=300).status_code
        except Exception as e:
            out["r"] = type(e).__name__

    t = threading.Thread(target=go)
    t.start()
    assert _watch_and_kill(lab, pattern, count), "the publish never wrote to the warehouse"
    t.join(30)
    assert isinstance(out.get("r"), str), f"the publish finished before the kill: {out}"
    lab.server.start()


def test_kill_during_publish(lab: Lab, tmp_path: Path) -> None:
    # 1. the first version: killed as soon as Iceberg writes its first data file
    _publish_killed(lab, "*.parquet")
    _check_consistent(lab)
    with lab.as_("admin") as c:
        v1 = c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=300).json()
        assert v1["version"] == "1.0.0"
        # 2. a patch version: killed after Iceberg committed its snapshot (the second new
        #    metadata file is the tag's, written after the append's commit) and before the lab
        #    recorded the version; the retry must not append the rows twice
        f = sample_file(SPINDLE, tmp_path, 700, 200)
        with lab.as_("firm-a") as cf:
            assert cf.post("/v1/provider/contracts/spindle-telemetry/deliveries",
                           files=[("file", (f.name, f.read_bytes(), "text/csv"))]).status_code == 201
        assert c.post("/v1/admin/run", params={"contract": SPINDLE}, timeout=300).json() != []
    _publish_killed(lab, "*.metadata.json", count=2)
    _check_consistent(lab)
    with lab.as_("admin") as c:
        v2 = c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=300).json()
        assert v2["version"] == "1.0.1"
        assert c.get("/v1/admin/audit/verify").json()["ok"]
    _check_consistent(lab)
    with use_lab(lab.home, lab.contracts):
        s = settings()
        m2 = json.loads((s.versions / "plant-telemetry" / "1.0.1" / "manifest.json").read_text())
        df = pl.read_parquet([s.home / f["path"] for f in m2["files"]])
        # the curated files, not the published forms beside them (a firm that withholds its name)
        curated = pl.concat([pl.read_parquet(p) for p in (s.home / "curated").rglob("*.parquet")
                             if not p.name.endswith(".published.parquet")], how="diagonal_relaxed")
    assert df.height == m2["rows"] == sum(m2["rows_per_contract"].values())
    assert df.height == curated.height  # every validated row once: no duplicate from the killed publish
    # a consumer pulls the version and every checksum matches
    client = Client(lab.server.url, lab.tokens["team-de"])
    got = client.pull("plant-telemetry@1.0.1", "predictive-maintenance", tmp_path / "pull")
    client.close()
    assert got.rows == m2["rows"] and len(got.files) == len(m2["files"])
