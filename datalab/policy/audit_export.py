"""Exporting the audit log for an auditor.

The export is JSON Lines, one entry per line with its ``prev_hash`` and
``hash``, so an auditor can recompute the chain without access to the lab
(``verify_export``) and compare the last hash with the one the lab reports.
Written to a temporary file and renamed, so a half-written export never
looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.store import catalog as cat


def export(path: Path, since_seq: int = 0, s: Settings | None = None) -> dict[str, Any]:
    """Write entries after ``since_seq`` to ``path``; returns a summary (count, first, last, head hash)."""
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    n, first, last, head = 0, None, None, cat.GENESIS
    with catalog.begin() as conn, open(tmp, "w", encoding="utf-8") as f:
        q = sa.select(cat.audit).where(cat.audit.c.seq > since_seq).order_by(cat.audit.c.seq)
        for r in conn.execute(q):
            entry = {"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action, "subject": r.subject,
                     "decision": r.decision, "detail": json.loads(r.detail), "prev_hash": r.prev_hash,
                     "hash": r.hash}
            f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            n += 1
            first = first if first is not None else r.seq
            last, head = r.seq, r.hash
    os.replace(tmp, path)
    return {"path": str(path), "entries": n, "first_seq": first, "last_seq": last, "last_hash": head}


def verify_export(path: Path, key: bytes | None = None) -> list[str]:
    """Recompute the keyed chain of an exported file (as an auditor would, with the lab's audit key)."""
    key = key if key is not None else cat.audit_key()
    problems: list[str] = []
    prev_hash: str | None = None
    expected: int | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{lineno}: not JSON ({err.msg})")
                continue
            body = {k: e[k] for k in ("seq", "ts", "actor", "action", "subject", "decision", "detail")}
            if expected is not None and e["seq"] != expected:
                problems.append(f"{path}:{lineno}: entry {expected} is missing (next is {e['seq']})")
            if prev_hash is not None and e["prev_hash"] != prev_hash:
                problems.append(f"{path}:{lineno}: previous hash does not match entry {e['seq'] - 1}")
            if cat._entry_hash(e["prev_hash"], body, key) != e["hash"]:
                problems.append(f"{path}:{lineno}: entry {e['seq']} does not match its hash (edited)")
            prev_hash, expected = e["hash"], e["seq"] + 1
    return problems
