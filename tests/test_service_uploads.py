"""The streaming multipart parser on its own: chunk boundaries anywhere, bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from datalab.service.uploads import UploadError, receive_multipart, receive_octets


def _body(files: list[tuple[str, bytes]], boundary: str = "b0und") -> bytes:
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{n}\"\r\n"
             f"Content-Type: text/csv\r\n\r\n".encode() + data + b"\r\n" for n, data in files]
    return b"preamble\r\n" + b"".join(parts) + f"--{boundary}--\r\nepilogue".encode()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 4096, 1 << 20])
def test_any_chunking_gives_the_same_files(tmp_path: Path, chunk: int) -> None:
    files = [("a.csv", b"x,y\r\n1,2\r\n--b0un\r\n"), ("../b.csv", os.urandom(5000)), ("c.csv", b"\r\n--b0un")]
    staging = tmp_path / str(chunk)
    staging.mkdir()
    got = asyncio.run(receive_multipart(_chunks(_body(files), chunk), "multipart/form-data; boundary=b0und",
                                        staging, 10_000))
    assert [g.name for g in got] == ["a.csv", "b.csv", "c.csv"]
    for g, (_, data) in zip(got, files, strict=True):
        assert g.path.read_bytes() == data and g.sha256 == hashlib.sha256(data).hexdigest() and g.bytes == len(data)


def test_limit_is_enforced_while_streaming(tmp_path: Path) -> None:
    body = _body([("big.csv", b"z" * 50_000)])
    with pytest.raises(UploadError) as e:
        asyncio.run(receive_multipart(_chunks(body, 1000), "multipart/form-data; boundary=b0und", tmp_path, 10_000))
    assert e.value.status == 413
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 10_000 + 1000


def test_memory_stays_bounded_for_a_large_upload(tmp_path: Path) -> None:
    """100 MiB through the parser in 64 KiB chunks: peak Python allocations stay around one chunk."""
    size, chunk = 100 << 20, 64 << 10
    block = os.urandom(chunk)

    async def body() -> AsyncIterator[bytes]:
        yield b"--b0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n"
        for _ in range(size // chunk):
            yield block
        yield b"\r\n--b0und--\r\n"

    tracemalloc.start()
    try:
        got = asyncio.run(receive_multipart(body(), "multipart/form-data; boundary=b0und", tmp_path, size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got[0].bytes == size and got[0].path.stat().st_size == size
    assert peak < 2 << 20, f"peak {peak / 2**20:.1f} MiB of Python allocations for a {size >> 20} MiB upload"


def test_octets(tmp_path: Path) -> None:
    got = asyncio.run(receive_octets(_chunks(b"abc" * 1000, 10), "../../x.csv", tmp_path, 10_000))
    assert got[0].name == "x.csv" and got[0].path.parent == tmp_path and got[0].bytes == 3000
