"""Issue 17 item 2: a database writer cannot rewrite the audit log unnoticed.

The attacks are the probe's: edit one entry and recompute every later hash
and the head (as the unkeyed chain allowed), and delete the newest entries
and move the head back. The keyed chain catches the first; the signed
checkpoints outside the database catch the second and name the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from datalab.cli.commands import app
from datalab.config import settings
from datalab.policy import audit_checkpoints, audit_export
from datalab.store import catalog as cat


def _log(n: int = 40) -> cat.Catalog:
    c = cat.Catalog(settings().catalog_url)
    for i in range(n):
        c.audit(f"firm:{i % 3}", "push", f"d-{i}", "accepted", {"i": i})
    return c


def _rewrite_from(c: cat.Catalog, seq: int, digest: object) -> None:
    """Edit entry ``seq`` and recompute every later hash and the head with ``digest(prev, body)``."""
    with c.begin() as conn:
        conn.execute(cat.audit.update().where(cat.audit.c.seq == seq).values(decision="refused"))
        prev = conn.execute(sa.select(cat.audit.c.hash).where(cat.audit.c.seq == seq - 1)).scalar()
        for r in conn.execute(sa.select(cat.audit).where(cat.audit.c.seq >= seq).order_by(cat.audit.c.seq)).all():
            entry = {"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action, "subject": r.subject,
                     "decision": r.decision, "detail": json.loads(r.detail)}
            body = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
            h = digest(prev, body)
            conn.execute(cat.audit.update().where(cat.audit.c.seq == r.seq).values(prev_hash=prev, hash=h))
            prev = h
        conn.execute(cat.audit_head.update().values(hash=prev))


def test_an_edit_with_recomputed_hashes_is_detected(lab: Path) -> None:
    c = _log()
    assert c.verify_audit() == []
    # the old chain's own recipe (SHA-256, no key): what a database writer could recompute
    _rewrite_from(c, 31, lambda prev, body: hashlib.sha256((prev + body).encode()).hexdigest())
    problems = c.verify_audit()
    assert problems and problems[0].startswith("entry 31: content does not match its hash"), problems
    out = CliRunner().invoke(app, ["audit", "verify"])
    assert out.exit_code == 1 and "entry 31" in out.output and "intact" not in out.output


def test_a_key_the_writer_made_up_does_not_help(lab: Path) -> None:
    c = _log()
    _rewrite_from(c, 31, lambda prev, body: cat._entry_hash(prev, json.loads(body), b"\x01" * 32))
    assert any(p.startswith("entry 31:") for p in c.verify_audit())


def test_deleting_the_newest_entries_contradicts_a_checkpoint(lab: Path) -> None:
    c = _log()
    cp_file = lab / "auditor" / "checkpoints.jsonl"
    audit_checkpoints.checkpoint(cp_file)  # entry 40
    with c.begin() as conn:
        conn.execute(sa.delete(cat.audit).where(cat.audit.c.seq > 35))
        h = conn.execute(sa.select(cat.audit.c.hash).where(cat.audit.c.seq == 35)).scalar()
        conn.execute(cat.audit_head.update().values(seq=35, hash=h))
    assert c.verify_audit() == []  # a shorter chain is still a chain: only the anchor shows the cut
    problems = audit_checkpoints.verify(cp_file)
    assert problems == [f"checkpoint checkpoints.jsonl:1 (entry 40, {json.loads(cp_file.read_text())['ts']}) "
                        "is contradicted: the log ends at entry 35; entries up to 40 were deleted"], problems
    out = CliRunner().invoke(app, ["audit", "verify", "--checkpoints", str(cp_file)])
    assert out.exit_code == 1 and "checkpoints.jsonl:1" in out.output and "contradicted" in out.output


def test_a_rewrite_that_kept_the_length_contradicts_the_checkpoint(lab: Path) -> None:
    c = _log(10)
    cp_file = lab / "auditor" / "cp.jsonl"
    audit_checkpoints.checkpoint(cp_file)
    c.audit("x", "push", "later", "accepted")
    audit_checkpoints.checkpoint(cp_file)
    # the writer holds the key too (worst case): the chain checks, the checkpoint does not
    _rewrite_from(c, 4, lambda prev, body: cat._entry_hash(prev, json.loads(body)))
    assert c.verify_audit() == []
    problems = audit_checkpoints.verify(cp_file)
    assert [p.split(" (")[0] for p in problems] == ["checkpoint cp.jsonl:1", "checkpoint cp.jsonl:2"]
    assert all("entry" in p and "holds another hash" in p for p in problems)


def test_a_forged_checkpoint_is_refused(lab: Path) -> None:
    _log(5)
    cp_file = lab / "cp.jsonl"
    cp = audit_checkpoints.checkpoint(cp_file)
    cp_file.write_text(json.dumps({**cp, "seq": 3}) + "\n")
    assert "signature does not match" in audit_checkpoints.verify(cp_file)[0]


def test_cli_checkpoint_and_intact_verify(lab: Path) -> None:
    _log(5)
    out = CliRunner().invoke(app, ["audit", "checkpoint"])
    assert out.exit_code == 0, out.output
    path = audit_checkpoints.default_path()
    assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600
    key = settings().secrets / "audit.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert key.read_text().strip() not in (lab / "catalog.db").read_bytes().hex()
    out = CliRunner().invoke(app, ["audit", "verify"])
    assert out.exit_code == 0 and "consistent with the checkpoints" in out.output, out.output


def test_an_export_verifies_only_with_the_key(lab: Path, tmp_path: Path) -> None:
    _log(5)
    f = audit_export.export(tmp_path / "x.jsonl")["path"]
    assert audit_export.verify_export(Path(f)) == []
    assert audit_export.verify_export(Path(f), key=b"\x02" * 32)
