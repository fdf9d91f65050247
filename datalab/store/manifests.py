"""Published versions on disk: their list, their manifests, and verified copies of their files.

Below publish and pull (which write and read versions) so that the policy
checks (sovereignty) and the kinds' attached files can read a manifest or
copy a file without importing either.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.errors import IntegrityError, NotFound
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest
from datalab.store.storage import Store


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def list_versions(dataset: str, s: Settings | None = None) -> list[dict[str, Any]]:
    s = s or settings()
    c = cat.Catalog(s.catalog_url)
    with c.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(cat.dataset_versions).where(cat.dataset_versions.c.dataset == dataset))]
    return sorted(rows, key=lambda r: _vkey(r["version"]))


def read_manifest(dataset: str, version: str | None, s: Settings | None = None) -> Manifest:
    s = s or settings()
    rows = list_versions(dataset, s)
    if not rows:
        raise NotFound(f"dataset {dataset!r} has no published version")
    if version in (None, "latest"):
        row = rows[-1]
    else:
        row = next((r for r in rows if r["version"] == version.removeprefix("v")), None)
        if row is None:
            raise NotFound(f"dataset {dataset!r} has no version {version!r} (published: {', '.join(r['version'] for r in rows)})")
    from datalab.store.storage import store

    text = store(s).read_text(row["manifest_path"])
    m = Manifest.from_dict(json.loads(text), where=f"manifest of {dataset}@{row['version']} ({row['manifest_path']})")
    return m.replace(status=row["status"])



def copy_verified(src: Path | str, dst: Path, sha: str, files: Store | None = None) -> None:
    """Copy ``src`` to ``dst`` through a temporary name, hashing while copying; refuse a checksum mismatch.

    ``files``: read ``src`` as a key of that store (a local file or an
    object, streamed) instead of as a local path. The temporary name
    carries the process id, so two processes writing the same
    content-addressed object never share a partial file.
    """
    h = hashlib.sha256()
    tmp = dst.with_suffix(f"{dst.suffix}.{os.getpid()}.part")
    try:
        with (files.open_input(src) if files is not None else open(src, "rb")) as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(8 << 20):
                h.update(chunk)
                fout.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if h.hexdigest() != sha:
        tmp.unlink()
        where = files.uri(files.key(src)) if files is not None else src
        raise IntegrityError(f"{where}: checksum {h.hexdigest()} does not match the manifest's {sha}")
    os.replace(tmp, dst)
