"""The HTTP client of the lab service (used by ``datalab push/pull/list/receipts``).

When ``DATALAB_URL`` and ``DATALAB_TOKEN`` are set, the CLI talks to a lab
over HTTP instead of the local one. Pushes stream each file from disk in a
multipart body whose length is known in advance (no chunked encoding, no
file in memory) and carry an ``Idempotency-Key``, so a push that failed on
the network is retried with the same key and can never land twice. Pulls
verify every file's SHA-256 against the manifest while writing, and resume
a broken download with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from datalab.config import settings
from datalab.errors import DatalabError, IntegrityError, MissingFile, NotFound, PolicyRefused
from datalab.intake.landing import FileReceipt, Receipt
from datalab.kinds import kind_of_manifest
from datalab.store.manifest import Manifest

Progress = Callable[[str, int, int], None]
CHUNK = 1 << 20
RETRIES = 3
# How long a push keeps answering the lab's "wait" (429 with Retry-After: its
# rate limit, or its intake pacing while its runs catch up) before giving up.
BUSY_WAIT_S = 900.0
# For this long after the lab asked a push under a contract to wait, the next push under it asks
# first (GET .../intake) instead of sending its body to hear the same: about the lab's LIVE_S.
ASK_FIRST_S = 10.0


class RemoteError(DatalabError):
    """The server refused or failed; carries its HTTP status and message."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


@dataclass
class RemotePull:
    dataset: str
    version: str
    directory: Path
    files: list[Path]
    rows: int


def from_env() -> Client | None:
    """A client when DATALAB_URL and DATALAB_TOKEN are both set, else None (local mode)."""
    s = settings()
    url, token = s.url, s.token
    if not url or not token:
        return None
    return Client(url, token)


def receipt_from_dict(d: dict[str, Any]) -> Receipt:
    files = [FileReceipt(**f) for f in d.get("files", [])]
    known = set(Receipt.__dataclass_fields__)  # a newer lab may send more fields than this client knows
    return Receipt(**{k: v for k, v in d.items() if k in known and k != "files"}, files=files)


def _multipart(files: list[tuple[str, Path]], progress: Progress | None) -> tuple[str, int, Iterator[bytes]]:
    """(content type, length, body generator) streaming the files from disk."""
    boundary = secrets.token_hex(16)
    heads = []
    for name, _ in files:
        safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        heads.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe}\"\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n").encode())
    tail = f"\r\n--{boundary}--\r\n".encode()
    sizes = [p.stat().st_size for _, p in files]
    length = sum(len(h) for h in heads) + sum(sizes) + len(tail) + 2 * (len(files) - 1)

    def body() -> Iterator[bytes]:
        for i, ((name, path), head) in enumerate(zip(files, heads, strict=True)):
            yield (b"\r\n" if i else b"") + head
            done = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    done += len(chunk)
                    if progress:
                        progress(name, done, sizes[i])
                    yield chunk
        yield tail

    return f"multipart/form-data; boundary={boundary}", length, body()


def retry_after(r: httpx.Response) -> int | None:
    """The seconds a 429 asks to wait (its Retry-After, whole seconds), else None."""
    if r.status_code != 429:
        return None
    value = r.headers.get("Retry-After", "").strip()
    return min(int(value), 300) if value.isdigit() else None


def _message(r: httpx.Response) -> str:
    """The lab's message of an error answer: its ``error``, with its ``problems`` if any."""
    try:
        body = r.json()
        msg = str(body.get("error") or r.text)
        if problems := body.get("problems"):
            msg = f"{msg}: {'; '.join(problems)}"
        return msg
    except (json.JSONDecodeError, AttributeError):
        return r.text[:500] or r.reason_phrase


class Client:
    """A thin, retrying client for one lab and one token."""

    def __init__(self, url: str, token: str, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
                                 headers={"Authorization": f"Bearer {token}", "User-Agent": "datalab-cli"})
        self._told_to_wait: dict[str, float] = {}  # contract -> when a push under it last heard 429

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check(r: httpx.Response) -> httpx.Response:
        if r.status_code < 400:
            return r
        msg = _message(r)
        if r.status_code == 404:
            raise NotFound(msg)
        if r.status_code == 403 and msg.startswith("refused by rule"):
            rule = msg.split("'")[1] if "'" in msg else "policy"
            raise PolicyRefused(rule, msg.split(": ", 1)[-1])
        raise RemoteError(r.status_code, msg)

    def get_json(self, path: str, **params: Any) -> Any:
        return self._check(self.http.get(path, params={k: v for k, v in params.items() if v is not None})).json()

    # -- providers -------------------------------------------------------------

    def push(self, contract: str, files: list[Path | tuple[str, Path]], progress: Progress | None = None,
             idempotency_key: str | None = None, correction: bool = False,
             on_wait: Callable[[str, int], None] | None = None, busy_wait_s: float = BUSY_WAIT_S) -> Receipt:
        """Push one delivery (``correction``: see landing.push).

        Retried with the same Idempotency-Key on network errors, and after
        the lab's Retry-After when it answers 429 (its rate limit, or its
        intake pacing while the contract's runs catch up: nothing was
        stored), for at most ``busy_wait_s`` seconds. Before the body is
        sent again the lab is asked whether it takes the push now
        (:meth:`_wait_for_intake`), so a wait costs a question, not an
        upload; so is the first try of a push under a contract whose last
        push was told to wait less than ``ASK_FIRST_S`` ago. ``on_wait``
        hears each wait (the lab's message, the seconds). Past that, the
        429 is raised.
        """
        items = [(f if isinstance(f, tuple) else (Path(f).name, Path(f))) for f in files]
        for _, p in items:
            if not Path(p).is_file():
                raise MissingFile(f"{p}: no such file")
        key = idempotency_key or uuid.uuid4().hex
        deadline = time.monotonic() + busy_wait_s
        failures = 0
        if time.monotonic() - self._told_to_wait.get(contract, -ASK_FIRST_S) < ASK_FIRST_S:
            self._wait_for_intake(contract, deadline, on_wait)  # the last push was told to wait: ask first
        while True:
            ctype, length, body = _multipart([(n, Path(p)) for n, p in items], progress)
            try:
                r = self.http.post(f"/v1/provider/contracts/{contract}/deliveries", content=body,
                                   params={"correction": "true"} if correction else None,
                                   headers={"Content-Type": ctype, "Content-Length": str(length),
                                            "Idempotency-Key": key})
            except httpx.TransportError:
                failures += 1
                if failures == RETRIES:
                    raise
                time.sleep(0.5 * 2 ** (failures - 1))
                continue
            delay = retry_after(r)
            if delay is not None:
                self._told_to_wait[contract] = time.monotonic()
            if delay is not None and time.monotonic() + delay <= deadline:
                if on_wait:
                    on_wait(_message(r), delay)
                time.sleep(delay)
                self._wait_for_intake(contract, deadline, on_wait)
                continue
            return receipt_from_dict(self._check(r).json())

    def _wait_for_intake(self, contract: str, deadline: float, on_wait: Callable[[str, int], None] | None) -> None:
        """Ask the lab whether it takes a push under ``contract`` now, before a body is sent (again).

        Asked after a 429, and before the first try when the contract's last
        push was told to wait. A refused push has sent its whole body; asking first
        (``GET .../intake``, no body) spares sending it again for every
        second the contract's runs still need. Returns when the answer is
        open, when the lab has no such question (an older lab: 404) or
        answers anything else, and at the deadline; the push then follows
        and is paced as any other.
        """
        while time.monotonic() < deadline:
            try:
                r = self.http.get(f"/v1/provider/contracts/{contract}/intake")
            except httpx.TransportError:
                return
            delay = retry_after(r)  # the rate limit's 429, asked too often
            if delay is None and r.status_code == 200:
                try:
                    body = r.json()
                except ValueError:  # not the lab's answer (a proxy's page): the push says what it is
                    return
                if body.get("open", True):
                    return
                delay = int(body.get("retry_after_s") or 1)
                message = str(body.get("reason") or "")
            elif delay is not None:
                message = _message(r)
            else:
                return
            if time.monotonic() + delay > deadline:
                return
            if on_wait:
                on_wait(message, delay)
            time.sleep(delay)

    def receipts(self, status: str | None = None, contract: str | None = None,
                 limit: int | None = None, offset: int = 0) -> list[Receipt]:
        """Receipts from ``offset`` on; ``limit`` None walks every page (the server's pages are bounded)."""
        out: list[Receipt] = []
        page = min(limit or 1000, 1000)
        while True:
            got = self.get_json("/v1/provider/receipts", status=status, contract=contract, limit=page, offset=offset)
            out += [receipt_from_dict(d) for d in got]
            offset += len(got)
            if len(got) < page or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    # -- consumers -------------------------------------------------------------

    def datasets(self, purpose: str) -> list[dict[str, Any]]:
        return self.get_json("/v1/datasets", purpose=purpose)

    def _download(self, url: str, purpose: str, dst: Path, sha: str, size: int, progress: Progress | None,
                  params: dict[str, str] | None = None) -> None:
        """Stream one file to ``dst``, resuming with Range after a broken connection; verify its hash."""
        tmp = dst.with_name(dst.name + ".part")
        tmp.unlink(missing_ok=True)
        for attempt in range(RETRIES):
            have = tmp.stat().st_size if tmp.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self.http.stream("GET", url, params={"purpose": purpose, **(params or {})}, headers=headers) as r:
                    if r.status_code >= 400:
                        r.read()
                        self._check(r)
                    mode = "ab" if r.status_code == 206 else "wb"
                    done = have if mode == "ab" else 0
                    with open(tmp, mode) as f:
                        for chunk in r.iter_bytes(CHUNK):
                            f.write(chunk)
                            done += len(chunk)
                            if progress:
                                progress(dst.name, done, size)
                break
            except httpx.TransportError:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != sha:
            tmp.unlink()
            raise IntegrityError(f"{url}: checksum {h.hexdigest()} does not match the manifest's {sha}")
        os.replace(tmp, dst)

    def pull(self, ref: str, purpose: str, to: Path, progress: Progress | None = None) -> RemotePull:
        """The same layout as a local pull: <name>-<version>/data/part-*.parquet, manifest.json, card.md."""
        name, _, version = ref.partition("@")
        version = version or "latest"
        base = f"/v1/datasets/{name}/versions/{version}"
        m = Manifest.from_dict(self.get_json(f"{base}/manifest", purpose=purpose), where=f"{self.url}{base}/manifest")
        out = Path(to) / f"{name}-{m.version}"
        data = out / "data"
        data.mkdir(parents=True, exist_ok=True)
        base = f"/v1/datasets/{name}/versions/{m.version}"
        files = []
        for i, f in enumerate(m.files):
            dst = data / f"part-{i:05d}.parquet"
            self._download(f"{base}/files/{i}", purpose, dst, f.sha256, f.bytes, progress)
            files.append(dst)
        kind = kind_of_manifest(m)  # the files its kind attaches (CAD: originals, thumbnails), as a local pull lays them out
        for folder in kind.download_folders(m):
            (out / folder).mkdir(parents=True, exist_ok=True)
        for dl in kind.attached(m):
            dst = out / dl.dest
            dst.parent.mkdir(parents=True, exist_ok=True)
            self._download(f"{base}/{dl.route}", purpose, dst, dl.sha256, dl.size, progress,
                           **({"params": dl.params} if dl.params else {}))
            if dl.listed:
                files.append(dst)
        (out / "manifest.json").write_text(json.dumps(m.to_dict(), indent=2, default=str))
        for fname in (m.datasheet or {}).get("files") or ["card.md"]:
            got = self.http.get(f"{base}/card-files/{fname}", params={"purpose": purpose})
            if got.status_code == 404:
                continue  # listed but not written (e.g. no plot for an empty version)
            self._check(got)
            if hashlib.sha256(got.content).hexdigest() != got.headers.get("x-checksum-sha256"):
                raise IntegrityError(f"{base}/card-files/{fname}: checksum does not match the server's")
            (out / fname).write_bytes(got.content)
        return RemotePull(name, m.version, out, files, m.rows)
