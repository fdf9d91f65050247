"""A published version, checked and shown as it is stored (no Dagster here; ``assets/datasets.py`` uses both).

* :func:`verify` re-reads a version's files and compares them with its
  manifest: every data file, CAD file and thumbnail is there with the recorded
  SHA-256 and size, and the row counts add up (the files' rows, the rows per
  contract and the manifest's total are one number). The Dagster asset check
  ``version_verifies`` runs it after each publish, so a version whose bytes or
  counts are wrong is red in the UI, not found out by the next pull.
* :func:`card_with_inline_images` turns the card's relative image links
  (``coverage.png``, ``files/thumbs/<sha>.png``) into data URIs: the Dagster
  UI renders Markdown metadata without a base directory, so relative links
  showed only their alt text (the CAD thumbnails on the CAD asset were already
  inlined this way).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from datalab.config import Settings, settings
from datalab.kinds import kind_of_manifest
from datalab.store.manifest import Manifest
from datalab.store.manifests import read_manifest
from datalab.store.storage import Store, store, version_key

MAX_INLINE_BYTES = 4 << 20  # all images of one card together; past this, links stay as they are
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def verify(name: str, version: str, s: Settings | None = None) -> tuple[list[str], dict[str, Any]]:
    """(problems, facts) of version ``name@version``; no problems: files and counts match the manifest."""
    s = s or settings()
    m = read_manifest(name, version, s)
    problems: list[str] = []
    checked = 0

    st = store(s)

    def check(rel: str, sha: str, size: int | None, what: str) -> None:
        nonlocal checked
        if not st.exists(rel):
            problems.append(f"{what} {rel}: missing from the lab's store")
            return
        if size is not None and size and st.size(rel) != size:
            problems.append(f"{what} {rel}: {st.size(rel):,} bytes, the manifest says {size:,}")
        got = _sha256(st, rel)
        if got != sha:
            problems.append(f"{what} {rel}: sha256 {got[:16]}… does not match the manifest's {sha[:16]}…")
        checked += 1

    if m.status != "withdrawn":  # a withdrawn version's data is deleted on purpose
        for f in m.files:
            check(f.path, f.sha256, f.bytes, "data file")
        for a in kind_of_manifest(m).attached(m):  # what its kind attaches (CAD: the files and thumbnails)
            check(a.path, a.sha256, a.size or None, a.what)
    in_files = sum(f.rows for f in m.files)
    per_contract = sum(int(v or 0) for v in m.rows_per_contract.values())
    if m.status != "withdrawn" and in_files != m.rows:
        problems.append(f"rows: the data files hold {in_files:,}, the manifest says {m.rows:,}")
    if m.rows_per_contract and per_contract != m.rows:
        problems.append(f"rows: the rows per contract add up to {per_contract:,}, the manifest says {m.rows:,}")
    return problems, {"version": m.version, "files_checked": checked, "rows": m.rows,
                      "rows_in_files": in_files, "rows_per_contract_total": per_contract}


def card_with_inline_images(name: str, m: Manifest, s: Settings | None = None) -> str | None:
    """The version's card.md with its images as data URIs (None when the version has no card)."""
    s = s or settings()
    st = store(s)
    vdir = version_key(name, m.version)
    try:
        text = st.read_text(f"{vdir}/card.md")
    except FileNotFoundError:
        return None
    # the card links attached files (CAD thumbnails) where a pull puts them
    thumbs = {a.dest: a.path for a in kind_of_manifest(m).attached(m)}
    budget = [MAX_INLINE_BYTES]

    def resolve(rel: str) -> str | None:
        """The key of a linked image: an attached file, or a file of the version's folder (no '..')."""
        if rel in thumbs:
            return thumbs[rel]
        parts = [x for x in rel.split("/") if x not in ("", ".")]
        return None if ".." in parts or not parts else "/".join([vdir, *parts])

    def inline(mt: re.Match[str]) -> str:
        alt, rel = mt.group(1), mt.group(2)
        if rel.startswith(("data:", "http:", "https:")) or not rel.endswith(".png"):
            return mt.group(0)
        key = resolve(rel)
        if key is None or not st.exists(key) or st.size(key) > budget[0]:
            return mt.group(0)
        data = st.read_bytes(key)
        budget[0] -= len(data)
        return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"

    return _IMAGE.sub(inline, text)


def _sha256(st: Store, key: str) -> str:
    """A stored file's checksum, streamed (a local file or an object)."""
    h = hashlib.sha256()
    with st.open_input(key) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
