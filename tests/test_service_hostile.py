"""Hostile input against the real server: every request gets a clear error, nothing partial lands,
nothing is written outside the firm's area.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from datalab.config import settings
from datalab.intake import landing
from datalab.policy import auth
from datalab.store import catalog as cat
from tests.conftest import PRESS
from tests.service_harness import (
    PRESS_LIMIT,
    Lab,
    sample_file,
    served_copy,
    use_lab,
)

pytestmark = pytest.mark.slow
PUSH = "/v1/provider/contracts/press-line/deliveries"


@pytest.fixture(scope="module")
def lab(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with served_copy(published_template, tmp_path_factory.mktemp("hostile")) as lab:
        yield lab


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _receipts(lab: Lab) -> list[landing.Receipt]:
    with use_lab(lab.home, lab.contracts):
        return landing.list_receipts()


def _raw_request(lab: Lab, head: bytes, body: bytes, close_early: bool = False) -> bytes:
    """Send bytes on a plain socket (for bodies httpx would refuse to send); returns the answer."""
    with socket.create_connection(("127.0.0.1", lab.server.port), timeout=30) as s:
        s.sendall(head + body)
        if close_early:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def _head(lab: Lab, ctype: str, length: int, who: str = "firm-b", extra: str = "") -> bytes:
    return (f"POST {PUSH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {lab.tokens[who]}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


def test_file_names_cannot_reach_a_path(lab: Lab, tmp_path: Path) -> None:
    before = _files(lab.home.parent)
    data = sample_file(PRESS, tmp_path, 80, 41).read_bytes()
    names = ["../../../../etc/passwd", "..\\..\\windows\\win.ini", "/abs/path.csv", "ok\x00.csv", ".hidden",
             "....//....//x.csv", "%2e%2e%2fcatalog.db"]
    with lab.as_("firm-b") as c:
        for i, name in enumerate(names):
            # other bytes each time (trailing newlines), so each is a new delivery with its own name
            r = c.post(PUSH, files=[("file", (name, data + b"\n" * i, "text/csv"))])
            assert r.status_code in (200, 201), (name, r.text)
            stored = r.json()["files"][0]["name"]
            assert "/" not in stored and "\\" not in stored and not stored.startswith(".") and "\x00" not in stored
        # an octet-stream push names its file in the query: same rules
        r = c.post(PUSH, params={"name": "../../../catalog.db"}, content=data + b"\n" * 20,
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code in (200, 201) and r.json()["files"][0]["name"] == "catalog.db"
    new = _files(lab.home.parent) - before
    allowed = (lab.home / "landing" / "lyon-presses", lab.home / "raw" / "lyon-presses")
    outside = [p for p in new if not any(p.is_relative_to(a) for a in allowed) and not p.name.startswith("catalog.db")
               and not p.name.endswith(".log")]
    assert outside == []
    assert not any(p.name in ("passwd", "win.ini") for p in _files(lab.home.parent))


@pytest.mark.parametrize("path", [
    "/v1/provider/receipts/..%2F..%2Fcatalog.db",
    "/v1/provider/receipts/../../catalog.db",
    "/v1/provider/contracts/..%2F..%2Fdata_contracts%2Fproviders%2Fbavaria-spindle%2Fspindle-telemetry.yaml",
    "/v1/provider/contracts/%2Fetc%2Fpasswd",
    "/v1/provider/contracts/bavaria-spindle%2Fspindle-telemetry",
])
def test_ids_cannot_reach_a_path(lab: Lab, path: str) -> None:
    with lab.as_("firm-b") as c:
        r = c.get(path)
    assert r.status_code == 404, r.text
    assert "spindle" not in r.text and "root:" not in r.text


@pytest.mark.parametrize("path", [
    "/v1/datasets/..%2F..%2Fcatalog.db/versions/latest/manifest",
    "/v1/datasets/plant-telemetry/versions/..%2F..%2F..%2Fcatalog.db/manifest",
    "/v1/datasets/plant-telemetry/versions/latest/files/-1",
    "/v1/datasets/plant-telemetry/versions/latest/files/0%2F..%2F..%2Fcatalog.db",
])
def test_dataset_ids_cannot_reach_a_path(lab: Lab, path: str) -> None:
    with lab.as_("team-de") as c:
        r = c.get(path, params={"purpose": "research"})
    assert r.status_code in (404, 422), r.text
    assert "SQLite" not in r.text


def test_oversized_uploads_are_refused_and_nothing_is_kept(lab: Lab) -> None:
    n = len(_receipts(lab))
    big = b"x" * (PRESS_LIMIT + 1)
    with lab.as_("firm-b") as c:
        r = c.post(PUSH, files=[("file", ("big.csv", big, "text/csv"))])
        assert r.status_code == 413 and "max_file_bytes" in r.json()["error"] and "262,144" in r.json()["error"]
        r = c.post(PUSH, params={"name": "big.csv"}, content=big, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413
        # exactly at the limit passes the size check (and is then judged on its content)
        r = c.post(PUSH, params={"name": "edge.csv"}, content=b"y" * PRESS_LIMIT,
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201 and r.json()["status"] == "rejected"
    assert len(_receipts(lab)) == n + 1
    assert not any((lab.home / "staging").rglob("*")) or all(p.is_dir() for p in (lab.home / "staging").rglob("*"))


def test_truncated_uploads_leave_nothing(lab: Lab, tmp_path: Path) -> None:
    n = len(_receipts(lab))
    data = sample_file(PRESS, tmp_path, 80, 42).read_bytes()
    part = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.csv\"\r\n\r\n" + data
    # 1. the connection closes before Content-Length bytes arrived
    answer = _raw_request(lab, _head(lab, "multipart/form-data; boundary=XyZ", len(part) + 1000), part, close_early=True)
    assert answer == b"" or b" 400 " in answer.split(b"\r\n")[0]
    # 2. the body is complete by its length but the closing boundary never comes
    answer = _raw_request(lab, _head(lab, "multipart/form-data; boundary=XyZ", len(part)), part)
    assert b" 400 " in answer.split(b"\r\n")[0] and b"truncated multipart" in answer
    # 3. an octet-stream body cut short
    answer = _raw_request(lab, _head(lab, "application/octet-stream", len(data) + 500).replace(
        PUSH.encode(), PUSH.encode() + b"?name=t.csv"), data, close_early=True)
    assert answer == b"" or b" 400 " in answer.split(b"\r\n")[0]
    with lab.as_("firm-b") as c:
        assert c.get("/v1/whoami").status_code == 200  # the server is fine
    assert len(_receipts(lab)) == n
    assert not [p for p in (lab.home / "staging").rglob("*") if p.is_file()]
    with use_lab(lab.home, lab.contracts):
        refusals = [e for e in cat.Catalog(settings().catalog_url).audit_entries(action="push") if e.decision == "refused"]
    assert any("went away" in e.detail["reason"] or "truncated" in e.detail["reason"] for e in refusals)


@pytest.mark.parametrize("ctype,body,status,words", [
    ("multipart/form-data", b"--a\r\n\r\nx\r\n--a--\r\n", 400, "boundary"),
    ("multipart/form-data; boundary=abc", b"no boundary in here at all" * 1000, 400, "boundary"),
    ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--abc--\r\n", 400, "filename"),
    ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Type: text/csv\r\n\r\nhi\r\n--abc--\r\n", 400, "Content-Disposition"),
    ("multipart/form-data; boundary=abc", b"--abc\r\nX: " + b"y" * 40000, 431, "headers"),
    ("multipart/form-data; boundary=abc", b"--abcGARBAGE", 400, "malformed"),
    ("multipart/form-data; boundary=abc", b"--abc--\r\n", 400, "no file"),
    ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"e.csv\"\r\n\r\n\r\n--abc--\r\n", 400, "empty"),
    ("text/plain", b"a,b\n1,2\n", 415, "Content-Type"),
    ("application/json", b"{}", 415, "Content-Type"),
    ("application/octet-stream", b"a,b\n", 400, "?name="),
])
def test_malformed_bodies_get_clear_errors(lab: Lab, ctype: str, body: bytes, status: int, words: str) -> None:
    n = len(_receipts(lab))
    with lab.as_("firm-b") as c:
        r = c.post(PUSH, content=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert len(_receipts(lab)) == n


def test_huge_headers_are_refused_and_the_server_lives(lab: Lab) -> None:
    for extra in (f"X-Big: {'a' * 200_000}\r\n", "".join(f"X-H{i}: v\r\n" for i in range(10_000))):
        head = f"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode()
        answer = _raw_request(lab, head, b"")
        # h11 answers 400 to a head it must buffer past its limit; one that arrived whole gets 431
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:200]
        assert b"Unauthorized" not in answer
    with lab.as_("firm-b") as c:
        r = c.get("/v1/whoami", headers={"Idempotency-Key": "k" * 500})
        assert r.status_code == 200
        r = c.post(PUSH, content=b"a", headers={"Content-Type": "application/octet-stream", "Idempotency-Key": "k" * 500},
                   params={"name": "a.csv"})
        assert r.status_code == 400 and "Idempotency-Key" in r.json()["error"]


def test_bad_tokens(lab: Lab) -> None:
    good = lab.tokens["firm-b"]
    tid = good.split("_")[1]
    wrong_secret = f"dl_{tid}_{'A' * 43}"
    with use_lab(lab.home, lab.contracts):
        expired, info = auth.create_token("firm-b", 1, "to expire", actor="test")
        revoked, rinfo = auth.create_token("firm-b", 1, "to revoke", actor="test")
        auth.revoke_token(rinfo.id, actor="test")
        with cat.Catalog(settings().catalog_url).begin() as conn:
            conn.execute(sa.update(auth.tokens).where(auth.tokens.c.id == info.id).values(expires_at="2020-01-01T00:00:00+00:00"))
    cases = {
        "": "missing bearer token", "Bearer": "missing bearer token", f"Basic {good}": "missing bearer token",
        "Bearer nonsense": "malformed", f"Bearer dl_{'0' * 12}_{'A' * 43}": "unknown token",
        f"Bearer {wrong_secret}": "unknown token", f"Bearer {expired}": "expired", f"Bearer {revoked}": "revoked",
        f"Bearer {good}x": "malformed",
    }
    for header, words in cases.items():
        r = lab.server.client().get("/v1/provider/receipts", headers={"Authorization": header} if header else {})
        assert r.status_code == 401, header
        assert words in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")
        assert good.split("_", 2)[2] not in r.text
    # a token in the query string is not a token
    assert lab.server.client().get("/v1/provider/receipts", params={"token": good}).status_code == 401
    with use_lab(lab.home, lab.contracts):
        refused = [e for e in cat.Catalog(settings().catalog_url).audit_entries(action="auth")]
    assert len(refused) >= len(cases) and all(good.split("_", 2)[2] not in str(e.detail) for e in refused)


def test_idempotency_keys(lab: Lab, tmp_path: Path) -> None:
    a = sample_file(PRESS, tmp_path, 70, 51).read_bytes()
    b = sample_file(PRESS, tmp_path, 70, 52).read_bytes()
    with lab.as_("firm-b") as c:
        h = {"Idempotency-Key": "gateway-7:batch-0001"}
        first = c.post(PUSH, files=[("file", ("a.csv", a, "text/csv"))], headers=h)
        assert first.status_code == 201
        again = c.post(PUSH, files=[("file", ("a.csv", a, "text/csv"))], headers=h)
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["delivery_id"] == first.json()["delivery_id"]
        n = len(_receipts(lab))
        other = c.post(PUSH, files=[("file", ("a.csv", b, "text/csv"))], headers=h)
        assert other.status_code == 409 and first.json()["delivery_id"] in other.json()["error"]
        assert len(_receipts(lab)) == n  # the other bytes did not land
        # the same key of another firm is another key
        with lab.as_("firm-a") as ca:
            assert ca.get("/v1/provider/receipts/" + first.json()["delivery_id"]).status_code == 404


def test_one_key_racing_with_different_bytes_lands_once(lab: Lab, tmp_path: Path) -> None:
    bodies = [sample_file(PRESS, tmp_path, 60, 70 + i).read_bytes() for i in range(6)]
    n = len(_receipts(lab))
    codes: list[int] = []

    def go(data: bytes) -> None:
        with lab.as_("firm-b") as c:
            codes.append(c.post(PUSH, files=[("file", ("r.csv", data, "text/csv"))],
                                headers={"Idempotency-Key": "race-1"}).status_code)

    threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201, 409, 409, 409, 409, 409]
    assert len(_receipts(lab)) == n + 1


def test_concurrent_identical_pushes_land_once(lab: Lab, tmp_path: Path) -> None:
    data = sample_file(PRESS, tmp_path, 90, 61).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    ids: list[str] = []

    def go() -> None:
        with lab.as_("firm-b") as c:
            r = c.post(PUSH, files=[("file", ("same.csv", data, "text/csv"))])
            assert r.status_code in (200, 201), r.text
            ids.append(r.json()["delivery_id"])

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert sum(1 for r in _receipts(lab) if r.files and r.files[0].sha256 == sha) == 1


def test_no_partial_delivery_is_visible(lab: Lab) -> None:
    """After all of the above: every receipt is complete, every stored byte matches its hash."""
    for r in _receipts(lab):
        with use_lab(lab.home, lab.contracts):
            stored = landing.stored_files(r.delivery_id)
        assert len(stored) == len([f for f in r.files])
        for _, path, sha in stored:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
            assert path.is_relative_to(lab.home / "landing" / r.tenant)
    with lab.as_("admin") as c:
        assert c.get("/v1/admin/audit/verify").json()["ok"]
