"""Where the lab's data files live: local folders (default) or S3-compatible object storage.

``DATALAB_STORAGE=s3://bucket/prefix`` names an object store; the endpoint
and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so MinIO,
Ceph RGW and AWS S3 are reached the same way. Unset, the store is
``$DATALAB_HOME`` and every operation is a plain file operation (the fast
path the embedded lab keeps).

One small interface over ``pyarrow.fs`` (the filesystem Polars, pyarrow and
pyiceberg's ``PyArrowFileIO`` already use) for what retention and withdrawal
need to prove on object storage: write, read, list by prefix, delete by
prefix. Keys are relative, ``/``-separated, checked segment by segment.

Status (issue 19): the store and its proofs are real and tested against
moto's S3 server; routing landing, raw, curated and the Iceberg warehouse
through it is not done yet (docs/scale.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datalab.config import Settings, settings
from datalab.errors import DatalabError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Store:
    """A root (folder or ``s3://bucket/prefix``) and the filesystem that reaches it."""

    def __init__(self, root: str, fs: Any, url: str):
        self._root, self.fs, self.url = root.rstrip("/"), fs, url.rstrip("/")

    @property
    def is_local(self) -> bool:
        return not self.url.startswith("s3://")

    def _path(self, key: str) -> str:
        parts = [p for p in key.strip("/").split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise DatalabError(f"storage key {key!r} may not contain '.' or '..' segments")
        return "/".join([self._root, *parts])

    def uri(self, key: str) -> str:
        """The key as a URI for Polars, pyarrow or pyiceberg (``file://`` or ``s3://``)."""
        p = self._path(key)
        return Path(p).as_uri() if self.is_local else f"s3://{p}"

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def read_bytes(self, key: str) -> bytes:
        with self.fs.open_input_stream(self._path(key)) as f:
            return f.read()

    def upload(self, local: Path, key: str) -> None:
        """Copy a local file to ``key`` in 8 MiB chunks (a multipart upload on S3)."""
        path = self._path(key)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as src, self.fs.open_output_stream(path) as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursive), keys relative to the root."""
        import pyarrow.fs as pafs

        base = self._path(prefix) if prefix.strip("/") else self._root
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        out = [ObjectInfo(i.path[len(self._root) + 1:], i.size or 0)
               for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File]
        return sorted(out, key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        """Delete every object under ``prefix``; returns (objects, bytes) deleted."""
        if not prefix.strip("/"):
            raise DatalabError("refusing to delete the whole store: name a prefix")
        objs = self.list(prefix)
        for o in objs:
            self.fs.delete_file(self._path(o.key))
        return len(objs), sum(o.size for o in objs)


def s3_filesystem() -> Any:
    """pyarrow's S3 filesystem configured from the standard AWS variables."""
    import pyarrow.fs as pafs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kw: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host or endpoint, scheme=scheme if host else "https")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kw.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                  session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kw)


def iceberg_properties() -> dict[str, str]:
    """pyiceberg FileIO properties for the same endpoint and credentials."""
    props = {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        props["s3.endpoint"] = endpoint
    for var, prop in (("AWS_ACCESS_KEY_ID", "s3.access-key-id"), ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
                      ("AWS_SESSION_TOKEN", "s3.session-token")):
        if os.environ.get(var):
            props[prop] = os.environ[var]
    props["s3.region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return props


def store(s: Settings | None = None) -> Store:
    """The lab's store: ``DATALAB_STORAGE`` if set, else ``$DATALAB_HOME``."""
    s = s or settings()
    if s.storage is None:
        import pyarrow.fs as pafs

        return Store(str(s.home), pafs.LocalFileSystem(), str(s.home))
    bucket_prefix = s.storage.removeprefix("s3://").strip("/")
    if not bucket_prefix:
        raise DatalabError(f"DATALAB_STORAGE={s.storage!r}: name a bucket (s3://bucket/prefix)")
    return Store(bucket_prefix, s3_filesystem(), s.storage)
