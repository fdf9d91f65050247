"""Signed checkpoints of the audit chain, kept outside the catalog database.

The keyed chain (``catalog.audit_key``) stops a database writer from editing
an entry and recomputing the hashes after it. It cannot stop them deleting
the newest entries and moving ``dl_audit_head`` back: what is left is still
a valid chain. A checkpoint anchors the head outside the database: one JSON
line ``{"seq", "hash", "ts", "sig"}`` appended to a file that the database
writer cannot reach (``DATALAB_AUDIT_CHECKPOINTS``, default
``$DATALAB_HOME/audit/checkpoints.jsonl``; an auditor keeps copies), signed
with the audit key. ``verify`` checks every checkpoint against the log and
names the one a rewrite contradicts: an entry it covers is gone, or holds
another hash.

Checkpoints are written by ``datalab audit checkpoint`` (run it from cron,
e.g. hourly), by the service when it starts and stops, and by
``POST /v1/admin/audit/checkpoint``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.store import catalog as cat


def default_path(s: Settings | None = None) -> Path:
    s = s or settings()
    return s.audit_checkpoints or s.home / "audit" / "checkpoints.jsonl"


def _sig(key: bytes, seq: int, head: str, ts: str) -> str:
    return hmac.new(key, f"datalab-audit-checkpoint\x00{seq}\x00{head}\x00{ts}".encode(), hashlib.sha256).hexdigest()


def checkpoint(path: Path | None = None, s: Settings | None = None) -> dict[str, Any]:
    """Append a signed checkpoint of the current head to ``path``; returns it.

    The head is read with the chain's own lock (the head row), so the
    checkpoint names an entry that exists; the line is appended with one
    ``write`` and fsynced, so a crash leaves whole lines.
    """
    s = s or settings()
    path = Path(path) if path is not None else default_path(s)
    with cat.Catalog(s.catalog_url).begin() as conn:
        head = conn.execute(sa.select(cat.audit_head).where(cat.audit_head.c.id == 1)).one()
    cp = {"seq": int(head.seq), "hash": head.hash, "ts": cat.now_iso()}
    cp["sig"] = _sig(cat.audit_key(), cp["seq"], cp["hash"], cp["ts"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(cp, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return cp


def verify(path: Path, s: Settings | None = None) -> list[str]:
    """Check every checkpoint in ``path`` against the catalog's log; returns the problems.

    A checkpoint whose signature is wrong was not written by this lab (or
    was edited) and proves nothing; one whose entry is gone or differs is
    the rewrite's evidence, named by its line, sequence number and time.
    """
    s = s or settings()
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such checkpoint file"]
    key = cat.audit_key()
    problems: list[str] = []
    with cat.Catalog(s.catalog_url).begin() as conn:
        last = conn.execute(sa.select(sa.func.max(cat.audit.c.seq))).scalar() or 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    cp = json.loads(line)
                    seq, head, ts, sig = int(cp["seq"]), str(cp["hash"]), str(cp["ts"]), str(cp["sig"])
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{path}:{lineno}: not a checkpoint line")
                    continue
                name = f"checkpoint {path.name}:{lineno} (entry {seq}, {ts})"
                if not hmac.compare_digest(_sig(key, seq, head, ts), sig):
                    problems.append(f"{name}: signature does not match (not written with this lab's audit key)")
                    continue
                if seq == 0:
                    continue
                row = conn.execute(sa.select(cat.audit.c.hash).where(cat.audit.c.seq == seq)).first()
                if row is None:
                    problems.append(f"{name} is contradicted: the log ends at entry {last}; "
                                    f"entries up to {seq} were deleted")
                elif not hmac.compare_digest(row.hash, head):
                    problems.append(f"{name} is contradicted: entry {seq} holds another hash; "
                                    "the log was rewritten up to it")
    return problems
