"""Receiving a delivery's files over HTTP, streamed to disk.

Two body shapes are accepted for ``POST .../deliveries``:

* ``application/octet-stream``: one file, its name in ``?name=``;
* ``multipart/form-data``: one or more file parts (each with a filename).

The multipart parser here is incremental and small on purpose: it never
holds more than one network chunk plus a boundary's length in memory,
writes each part straight into the staging file while hashing it, and stops
at the contract's per-file limit, so a 20 GB delivery costs 20 GB of disk and
a few hundred KiB of memory. Anything malformed (no boundary, a part without
a filename, headers that never end, a body that stops before the closing
boundary) raises ``UploadError`` with the rule that was broken; the caller
removes the staging directory, so nothing partial is ever landed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from datalab.intake.landing import safe_name

MAX_PART_HEADERS = 16 << 10
MAX_FILES = 1000
_BOUNDARY = re.compile(r'boundary="?([^";,]{1,200})"?', re.I)
_FILENAME = re.compile(r'filename="((?:[^"\\]|\\.)*)"', re.I)


class UploadError(Exception):
    """The request body cannot be a delivery; ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass
class StagedFile:
    name: str
    path: Path
    sha256: str = ""
    bytes: int = 0
    _h: object = field(default_factory=hashlib.sha256, repr=False)


class _Sink:
    """Writes parts into ``staging`` with the size limit and hashing."""

    def __init__(self, staging: Path, limit: int):
        self.staging, self.limit = staging, limit
        self.files: list[StagedFile] = []
        self._f = None

    def open(self, name: str) -> None:
        if len(self.files) >= MAX_FILES:
            raise UploadError(413, f"a delivery holds at most {MAX_FILES} files")
        sf = StagedFile(safe_name(name), self.staging / f"{len(self.files):04d}")
        self.files.append(sf)
        self._f = open(sf.path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, data: bytes) -> None:
        sf = self.files[-1]
        sf.bytes += len(data)
        if sf.bytes > self.limit:
            raise UploadError(413, f"{sf.name}: more than the contract's limit of {self.limit:,} bytes "
                                   "(rule: limits.max_file_bytes); nothing was stored")
        sf._h.update(data)  # type: ignore[attr-defined]
        self._f.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            sf = self.files[-1]
            sf.sha256 = sf._h.hexdigest()  # type: ignore[attr-defined]

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


async def receive_octets(stream: AsyncIterator[bytes], name: str, staging: Path, limit: int) -> list[StagedFile]:
    """One file sent as the raw body."""
    sink = _Sink(staging, limit)
    sink.open(name)
    try:
        async for chunk in stream:
            if chunk:
                sink.write(chunk)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    if sink.files[0].bytes == 0:
        raise UploadError(400, f"{sink.files[0].name}: the body is empty")
    return sink.files


def boundary_of(content_type: str) -> bytes:
    m = _BOUNDARY.search(content_type)
    if not m:
        raise UploadError(400, "multipart/form-data without a boundary parameter (rule: RFC 7578)")
    return m.group(1).strip().encode("latin-1")


def _part_filename(headers: bytes) -> str:
    text = headers.decode("utf-8", errors="replace")
    disp = next((ln for ln in text.split("\r\n") if ln.lower().startswith("content-disposition:")), None)
    if disp is None or "form-data" not in disp.lower():
        raise UploadError(400, "a multipart part has no 'Content-Disposition: form-data' header")
    m = _FILENAME.search(disp)
    if not m or not m.group(1):
        raise UploadError(400, "every part must be a file with a filename (form fields are not accepted)")
    return m.group(1).replace('\\"', '"')


async def receive_multipart(
    stream: AsyncIterator[bytes], content_type: str, staging: Path, limit: int,
) -> list[StagedFile]:
    """Parse ``multipart/form-data`` incrementally into staged files."""
    delim = b"--" + boundary_of(content_type)
    body_delim = b"\r\n" + delim
    sink = _Sink(staging, limit)
    buf = b""
    state = "preamble"
    try:
        async for chunk in stream:
            buf += chunk
            while True:
                if state == "preamble":
                    i = buf.find(delim)
                    if i < 0:
                        if len(buf) > MAX_PART_HEADERS:
                            raise UploadError(400, "no multipart boundary found at the start of the body")
                        buf = buf[-len(delim):] if len(buf) > len(delim) else buf
                        break
                    buf, state = buf[i + len(delim):], "after_delim"
                elif state == "after_delim":
                    if len(buf) < 2:
                        break
                    if buf.startswith(b"--"):
                        state, buf = "done", b""
                        break
                    if not buf.startswith(b"\r\n"):
                        raise UploadError(400, "malformed multipart: a boundary is not followed by CRLF or '--'")
                    buf, state = buf[2:], "headers"
                elif state == "headers":
                    i = buf.find(b"\r\n\r\n")
                    if i > MAX_PART_HEADERS or (i < 0 and len(buf) > MAX_PART_HEADERS):
                        # also when the whole head arrived in one chunk (it once passed at 20 KiB)
                        raise UploadError(431, f"multipart part headers longer than {MAX_PART_HEADERS} bytes")
                    if i < 0:
                        break
                    sink.open(_part_filename(buf[:i]))
                    buf, state = buf[i + 4:], "body"
                elif state == "body":
                    i = buf.find(body_delim)
                    if i < 0:
                        keep = len(body_delim) - 1
                        if len(buf) > keep:
                            sink.write(buf[:-keep])
                            buf = buf[-keep:]
                        break
                    sink.write(buf[:i])
                    sink.close()
                    buf, state = buf[i + len(body_delim):], "after_delim"
                else:  # done: the epilogue is ignored
                    buf = b""
                    break
    finally:
        sink.abort()
    if state != "done":
        raise UploadError(400, "truncated multipart body: the closing boundary never came; nothing was stored")
    if not sink.files:
        raise UploadError(400, "the multipart body holds no file")
    for sf in sink.files:
        if sf.bytes == 0:
            raise UploadError(400, f"{sf.name}: the file is empty")
    return sink.files
