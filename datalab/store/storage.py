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

Every step of the pipeline reaches its files through ``store()``: it writes
a file on this machine and ``save``s it, and ``fetch``es one before reading
it (both nothing at all for the local store). Tested against moto's S3
server (tests/test_storage_s3.py, tests/test_cluster.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datalab.config import Settings, safe_segment, settings
from datalab.errors import DatalabError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Store:
    """A root (folder or ``s3://bucket/prefix``), the filesystem that reaches it, and this machine's copy.

    Keys are paths relative to the lab's files root (``landing/...``,
    ``raw/...``, ``curated/...``, ``warehouse/...``, ``versions/...``), the
    same relative paths the catalog and the manifests record. ``local_root``
    is where a key's file is on this machine: the home itself for a local
    store (then ``fetch`` and ``save`` do nothing: the fast path), the scratch
    folder for an object store, where a step writes a file and ``save``
    uploads it (and drops the local copy), and where ``fetch`` downloads one.
    Files under a key are written once per content or per delivery, so a
    fetched copy never goes stale; ``fetched`` drops it again after use.
    """

    def __init__(self, root: str, fs: Any, url: str, local_root: Path):
        self._root, self.fs, self.url = root.rstrip("/"), fs, url.rstrip("/")
        self.local_root = local_root
        self._kept: set[Path] = set()  # files written here, uploaded and kept for this process's next step
        self._seq = itertools.count()

    @property
    def is_local(self) -> bool:
        return not self.url.startswith("s3://")

    def _path(self, key: str) -> str:
        parts = [p for p in key.strip("/").split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise DatalabError(f"storage key {key!r} may not contain '.' or '..' segments")
        return "/".join([self._root, *parts])

    def key(self, path: Path | str) -> str:
        """The key of a path under the files root (a key is returned as it is)."""
        if isinstance(path, str) and not Path(path).is_absolute():
            self._path(path)  # checked
            return path.strip("/")
        try:
            key = Path(path).relative_to(self.local_root).as_posix()
        except ValueError:
            raise DatalabError(f"{path} is not under the lab's files root {self.local_root}") from None
        self._path(key)  # checked: no '..' climbing out of the root
        return key

    def local(self, key: str) -> Path:
        """Where ``key``'s file is (or would be) on this machine; nothing is fetched."""
        self._path(key)
        return self.local_root / key.strip("/")

    def uri(self, key: str) -> str:
        """The key as a URI for Polars, pyarrow or pyiceberg (``file://`` or ``s3://``)."""
        p = self._path(key)
        return Path(p).as_uri() if self.is_local else f"s3://{p}"

    # -- files by path: what the pipeline's steps use -------------------------------------------

    def fetch(self, key_or_path: Path | str) -> Path:
        """The file on this machine: a local store's own file, or a copy downloaded from the object store.

        The copy is this process's own (under ``.fetch/<pid>/`` in the scratch
        folder), so a worker dropping its copies never pulls a file from
        under another worker on the same machine; drop it with ``evict`` (or
        read inside ``fetched``). A file this process wrote and saved with
        ``keep`` is its own already and is not downloaded again.
        """
        key = self.key(key_or_path)
        mine = self.local(key)
        if self.is_local or mine in self._kept:
            return mine
        dst = self.local_root / ".fetch" / f"{os.getpid()}-{threading.get_ident()}-{next(self._seq)}" / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.fs.open_input_stream(self._path(key)) as src, open(dst, "wb") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
        except FileNotFoundError:
            shutil.rmtree(self._fetch_dir(dst), ignore_errors=True)
            raise FileNotFoundError(f"{self.uri(key)}: no such object in the lab's store") from None
        except BaseException:
            shutil.rmtree(self._fetch_dir(dst), ignore_errors=True)
            raise
        return dst

    def clean_fetched(self) -> list[str]:
        """Remove the private fetched copies of processes on this machine that are gone; their folders.

        A process drops its copies when its work ends; one that was killed
        (a worker's SIGKILL, an out-of-memory kill) leaves them in the scratch
        folder. A copy's folder names its process (``<pid>-<thread>-<n>``),
        so a folder whose process no longer runs is removed. Called when the
        service or a worker starts.
        """
        root = self.local_root / ".fetch"
        if self.is_local or not root.is_dir():
            return []
        removed = []
        for d in sorted(root.iterdir()):
            pid = d.name.split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
        return removed

    def _fetch_dir(self, path: Path) -> Path | None:
        """The private folder a fetched copy is in (None for any other path)."""
        try:
            rel = path.relative_to(self.local_root / ".fetch")
        except ValueError:
            return None
        return self.local_root / ".fetch" / rel.parts[0]

    def save(self, path: Path, keep: bool = False) -> str:
        """Upload a file written on this machine to its key (an object store), dropping the local copy
        unless ``keep`` (then ``fetch`` hands out this copy until ``evict``); returns the key.
        A local store already holds it."""
        key = self.key(path)
        if not self.is_local:
            self.upload(Path(path), key)
            if keep:
                self._kept.add(self.local(key))
            else:
                self.evict(path)
        return key

    def save_tree(self, folder: Path, keep: bool = False) -> list[str]:
        """``save`` every file under ``folder``."""
        return [self.save(p, keep) for p in sorted(Path(folder).rglob("*")) if p.is_file()]

    def evict(self, path: Path | str) -> None:
        """Drop this machine's copy of an object-store file: a fetched copy, or a file written here
        (never a local store's file)."""
        if self.is_local:
            return
        p = Path(path)
        private = self._fetch_dir(p) if p.is_absolute() else None
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
            return
        mine = self.local(self.key(path))
        self._kept.discard(mine)
        mine.unlink(missing_ok=True)

    @contextmanager
    def fetched(self, *keys: Path | str) -> Iterator[list[Path]]:
        """The files on this machine for the block (read the paths given, not the keys' own paths);
        copies downloaded for it are dropped after."""
        with self.session() as here:
            yield [here.path(k) for k in keys]

    def scan_parquet(self, keys: list[str], **kw: Any) -> Any:
        """A Polars LazyFrame over the files in place: local paths, or the objects read by Polars itself
        (ranged reads, only the columns and row groups a query needs)."""
        import polars as pl

        if self.is_local:
            return pl.scan_parquet([str(self.local(k)) for k in keys], **kw)
        return pl.scan_parquet([self.uri(self.key(k)) for k in keys], storage_options=polars_storage_options(), **kw)

    @contextmanager
    def session(self) -> Iterator[Fetched]:
        """Files fetched on demand for one piece of work (``Fetched.path``), each once, dropped after it."""
        f = Fetched(self)
        try:
            yield f
        finally:
            f.close()

    def key_of_uri(self, uri: str) -> str:
        """The key of a URI inside the store (what pyiceberg records); refused for one outside it."""
        from urllib.parse import unquote

        if self.is_local and uri.startswith("file://"):
            return self.key(Path(unquote(uri.removeprefix("file://"))))
        prefix = f"s3://{self._root}/"
        if not self.is_local and uri.startswith(prefix):
            return self.key(uri.removeprefix(prefix))
        raise DatalabError(f"{uri} is outside the lab's store {self.url}")

    def exists(self, key_or_path: Path | str) -> bool:
        key = self.key(key_or_path)
        if self.is_local:
            return self.local(key).is_file()
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def size(self, key_or_path: Path | str) -> int:
        key = self.key(key_or_path)
        if self.is_local:
            return self.local(key).stat().st_size
        info = self.fs.get_file_info(self._path(key))
        if info.size is None:
            raise FileNotFoundError(f"{self.uri(key)}: no such object in the lab's store")
        return int(info.size)

    def open_input(self, key_or_path: Path | str) -> Any:
        """A random-access reader of the file (``pyarrow.NativeFile``): a footer or a first row group
        is read without fetching the whole file."""
        return self.fs.open_input_file(self._path(self.key(key_or_path)))

    def parquet_rows(self, key_or_path: Path | str) -> int:
        """A Parquet file's row count, from its footer."""
        import pyarrow.parquet as pq

        with self.open_input(key_or_path) as f:
            return pq.ParquetFile(f).metadata.num_rows

    def parquet_head(self, key_or_path: Path | str, n: int) -> Any:
        """The first ``n`` rows of a Parquet file (a ``pyarrow.Table``), read from its first row group(s)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.open_input(key_or_path) as f:
            pf = pq.ParquetFile(f)
            batch = next(pf.iter_batches(batch_size=n), None)
            return pa.Table.from_batches([batch]) if batch is not None else pf.schema_arrow.empty_table()

    def remove(self, key_or_path: Path | str) -> int:
        """Delete one file (and this machine's copy); its bytes, 0 if it was not there."""
        key = self.key(key_or_path)
        local = self.local(key)
        size = 0
        if local.exists():
            size = local.stat().st_size
            local.unlink()
        if not self.is_local:
            import pyarrow.fs as pafs

            info = self.fs.get_file_info(self._path(key))
            if info.type == pafs.FileType.File:
                size = int(info.size or 0)
                self.fs.delete_file(self._path(key))
                self._prune(key.rsplit("/", 1)[0] if "/" in key else "")
        return size

    def _prune(self, folder: str) -> None:
        """Remove the empty "folder" marker objects pyarrow leaves after a delete, up to the area's folder.

        S3 has no folders; pyarrow writes an empty ``<folder>/`` object when a
        delete empties one, so a folder named after a firm (``raw/<tenant>/``)
        would outlive its files. Each empty level is deleted, deepest first;
        the area's own marker (``raw/``) names nobody and stays.
        """
        import pyarrow.fs as pafs

        parts = [p for p in folder.strip("/").split("/") if p]
        while len(parts) > 1:
            path = self._path("/".join(parts))
            if self.fs.get_file_info(path).type != pafs.FileType.Directory:
                return  # no such folder (nothing was left behind here)
            if self.fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)):
                return  # not empty
            self.fs.delete_dir(path)
            parts.pop()

    # -- objects by key -------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` naming it when there is none."""
        import pyarrow.fs as pafs

        try:
            with self.fs.open_input_stream(self._path(key)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)}: no such file in the lab's store") from None
        except OSError:
            if self.fs.get_file_info(self._path(key)).type != pafs.FileType.File:
                raise FileNotFoundError(f"{self.uri(key)}: no such file in the lab's store") from None
            raise

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def upload(self, local: Path, key: str) -> None:
        """Copy a local file to ``key`` in 8 MiB chunks (a multipart upload on S3)."""
        path = self._path(key)
        if self.is_local:
            if Path(path) == Path(local):
                return
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
        """Delete every object under ``prefix`` (and this machine's copies); returns (objects, bytes) deleted."""
        if not prefix.strip("/"):
            raise DatalabError("refusing to delete the whole store: name a prefix")
        objs = self.list(prefix)
        for o in objs:
            self.fs.delete_file(self._path(o.key))
        if not self.is_local:
            shutil.rmtree(self.local(prefix), ignore_errors=True)
            import pyarrow.fs as pafs

            if self.fs.get_file_info(self._path(prefix)).type == pafs.FileType.Directory:
                self.fs.delete_dir(self._path(prefix))  # the markers the deletes left
            self._prune(prefix.strip("/").rsplit("/", 1)[0] if "/" in prefix.strip("/") else "")
        return len(objs), sum(o.size for o in objs)


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class Fetched:
    """The files one piece of work reads, fetched on first use and dropped together (``Store.session``)."""

    def __init__(self, store: Store):
        self.store = store
        self._paths: dict[str, Path] = {}
        self._lock = threading.Lock()

    def path(self, key_or_path: Path | str) -> Path:
        """The file on this machine (fetched once per session)."""
        key = self.store.key(key_or_path)
        with self._lock:
            if key not in self._paths:
                self._paths[key] = self.store.fetch(key)
            return self._paths[key]

    def close(self) -> None:
        for p in self._paths.values():
            if self.store._fetch_dir(p) is not None:
                self.store.evict(p)
        self._paths.clear()


_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


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


def polars_storage_options() -> dict[str, str]:
    """Polars' (object_store's) options for the same endpoint and credentials."""
    opts = {"aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    for var, opt in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(var):
            opts[opt] = os.environ[var]
    return opts


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


_STORES: dict[tuple[object, ...], Store] = {}


def version_key(dataset: str, version: str, name: str = "") -> str:
    """The key of a published version's folder, or of one file in it (manifest, card, datasheet, masks)."""
    return "/".join(["versions", safe_segment(dataset, "dataset"), safe_segment(version, "version"), *([name] if name else [])])


def store(s: Settings | None = None) -> Store:
    """The lab's store: ``DATALAB_STORAGE`` if set, else ``$DATALAB_HOME`` (one per settings and endpoint)."""
    s = s or settings()
    endpoint = tuple(os.environ.get(v) for v in _AWS_VARS) if s.storage else ()
    key = (s.home, s.storage, s.scratch, endpoint)
    hit = _STORES.get(key)
    if hit is not None:
        return hit
    if s.storage is None:
        import pyarrow.fs as pafs

        st = Store(str(s.home), pafs.LocalFileSystem(), str(s.home), s.home)
    else:
        bucket_prefix = s.storage.removeprefix("s3://").strip("/")
        if not bucket_prefix:
            raise DatalabError(f"DATALAB_STORAGE={s.storage!r}: name a bucket (s3://bucket/prefix)")
        st = Store(bucket_prefix, s3_filesystem(), s.storage, s.files_root)
    if len(_STORES) > 16:
        _STORES.clear()
    _STORES[key] = st
    return st
