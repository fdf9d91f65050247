"""Withdrawal and retention across sites: signed events, an outbox that survives restarts, deletion proofs.

When a version is withdrawn at the provider (a firm's withdrawal or its
retention date: both end in ``withdrawals.withdraw_version``), every peer
that received it through a transfer must delete its replica. ``scan``
finds such versions and queues one event per peer in ``federation.db``;
``deliver`` sends the due ones (the site's service does both every few
seconds) with exponential backoff, so a peer that is down gets the event
when it is back, even if the provider restarted meanwhile. The event is
signed by the provider's key (it is evidence on its own, beside the request
token); the peer deletes with the same proof as a local deletion (path,
sha256 and size of every file removed) and answers with it, which the
provider audits as the peer's confirmation.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import threading
import time
import uuid
from contextlib import closing
from typing import Any

import sqlalchemy as sa

from datalab.config import Settings, settings
from datalab.errors import DatalabError
from datalab.federation.identity import _load_public, db, get_peer, private_key, site_name
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest
from datalab.store.storage import store

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  id TEXT PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, event TEXT NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL, last_error TEXT,
  confirmation TEXT, created TEXT NOT NULL, UNIQUE (peer, kind, subject));
"""


def _conn(s: Settings | None) -> Any:
    c = db(s)
    c.executescript(SCHEMA)
    return c


def _canonical(event: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in event.items() if k != "signature"}, sort_keys=True, separators=(",", ":")).encode()


def sign(event: dict[str, Any], s: Settings | None = None) -> dict[str, Any]:
    sig = private_key(s).sign(_canonical(event))
    return {**event, "signature": base64.urlsafe_b64encode(sig).rstrip(b"=").decode()}


def verify(event: dict[str, Any], peer: str, s: Settings | None = None) -> None:
    """Raise DatalabError unless ``event`` is signed by ``peer``'s registered key and issued by it."""
    from cryptography.exceptions import InvalidSignature

    if event.get("issuer") != peer:
        raise DatalabError(f"event issued by {str(event.get('issuer'))[:60]!r}, sent by {peer}")
    sig = str(event.get("signature", ""))
    try:
        _load_public(get_peer(peer, s).public_key).verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)),
                                                           _canonical(event))
    except (InvalidSignature, ValueError):
        raise DatalabError(f"event signature does not match the registered key of {peer}") from None


def holders(dataset: str, version: str, s: Settings | None = None) -> list[tuple[str, str]]:
    """(peer, agreement id) of every peer this site started a transfer of ``dataset@version`` to."""
    from datalab.federation import negotiation as neg
    from datalab.federation import transfer as tr

    with closing(tr._conn(s)) as c:
        rows = c.execute("SELECT DISTINCT peer, agreement_id FROM transfers WHERE role='provider' "
                         "AND state IN ('STARTED','COMPLETED')").fetchall()
    out = []
    for peer, agreement in rows:
        try:
            n = neg.by_agreement(agreement, s)
        except DatalabError:
            continue
        if (n.dataset, n.version) == (dataset, version):
            out.append((peer, agreement))
    return out


def scan(s: Settings | None = None) -> int:
    """Queue a signed withdrawal event for every peer holding a replica of a withdrawn version; how many new."""
    from datalab.policy import withdrawals

    s = s or settings()
    with withdrawals.catalog(s).begin() as conn:
        rows = list(conn.execute(sa.select(withdrawals.version_withdrawals)))
    new = 0
    for r in rows:
        for peer, agreement in holders(r.dataset, r.version, s):
            event = sign({"@type": "datalab:WithdrawalEvent", "id": f"urn:uuid:{uuid.uuid4()}", "issuer": site_name(s),
                          "dataset": r.dataset, "version": r.version, "agreement": agreement,
                          "reason": r.reason, "withdrawn_at": r.at}, s)
            with closing(_conn(s)) as c:
                cur = c.execute("INSERT OR IGNORE INTO outbox VALUES (?,?,?,?,?,'pending',0,?,NULL,NULL,?)",
                                (event["id"], peer, "withdrawal", f"{r.dataset}@{r.version}", json.dumps(event),
                                 time.time(), dt.datetime.now(dt.UTC).isoformat()))
            if cur.rowcount:
                new += 1
                cat.Catalog(s.catalog_url).audit("federation", "federation.withdrawal", f"{r.dataset}@{r.version}",
                                                 "queued", {"peer": peer, "event": event["id"], "agreement": agreement})
    return new


def outbox(s: Settings | None = None) -> list[dict[str, Any]]:
    with closing(_conn(s)) as c:
        cols = ["id", "peer", "kind", "subject", "state", "attempts", "next_try", "last_error", "confirmation"]
        return [dict(zip(cols, r, strict=True)) for r in c.execute(f"SELECT {', '.join(cols)} FROM outbox ORDER BY created")]


def deliver(s: Settings | None = None, now: float | None = None) -> int:
    """Send every due event; a failure is retried later with backoff. How many were confirmed."""
    from datalab.federation.client import PeerError, call

    s = s or settings()
    now = time.time() if now is None else now
    max_backoff = s.outbox_max_backoff
    with closing(_conn(s)) as c:
        due = c.execute("SELECT id, peer, subject, event, attempts FROM outbox WHERE state='pending' AND next_try<=?",
                        (now,)).fetchall()
    done = 0
    for eid, peer, subject, event, attempts in due:
        try:
            answer = call(get_peer(peer, s), "POST", "/dsp/events/withdrawal", json.loads(event), timeout=30, s=s)
        except (PeerError, DatalabError) as e:
            with closing(_conn(s)) as c:
                c.execute("UPDATE outbox SET attempts=attempts+1, next_try=?, last_error=? WHERE id=?",
                          (now + min(max_backoff, 2.0 ** attempts), str(e)[:500], eid))
            continue
        with closing(_conn(s)) as c:
            c.execute("UPDATE outbox SET state='confirmed', attempts=attempts+1, confirmation=? WHERE id=?",
                      (json.dumps(answer), eid))
        cat.Catalog(s.catalog_url).audit("federation", "federation.withdrawal", subject, "confirmed", {
            "peer": peer, "event": eid, "files_deleted": len(answer.get("deleted", [])),
            "bytes_deleted": sum(int(f.get("bytes", 0)) for f in answer.get("deleted", [])), "proof": answer.get("deleted")})
        done += 1
    return done


def apply_withdrawal(event: dict[str, Any], peer: str, s: Settings | None = None) -> dict[str, Any]:
    """At the consumer: delete the replica the event names, with the local deletion's proof (idempotent)."""
    from datalab.federation.transfer import incoming_dir
    from datalab.policy import withdrawals

    s = s or settings()
    verify(event, peer, s)
    dataset, version = str(event["dataset"]), str(event["version"])
    ledger: list[dict[str, Any]] = []
    with cat.Catalog(s.catalog_url).begin() as conn:
        row = conn.execute(sa.select(cat.dataset_versions).where(
            (cat.dataset_versions.c.dataset == dataset) & (cat.dataset_versions.c.version == version))).first()
    if row is not None:
        st = store(s)
        m = Manifest.from_dict(json.loads(st.read_text(row.manifest_path)), where=row.manifest_path)
        rep = m.replica or {}
        if rep.get("site") != peer:
            raise DatalabError(f"{dataset}@{version} here is not a replica of {peer}'s; nothing deleted")
        vdir = row.manifest_path.rsplit("/", 1)[0]
        for o in st.list(vdir):
            if not o.key.endswith("/manifest.json"):
                ledger.append(_stored_proof(st, o.key))
        withdrawals.withdraw_version(dataset, version, f"withdrawn at {peer}: {event.get('reason', '')}",
                                     [], f"site:{peer}", s)
    inc = incoming_dir(str(event.get("agreement", "")), s)
    if inc.exists():  # a partial download of the same agreement goes too
        ledger += [_proof(p, s) for p in sorted(inc.rglob("*")) if p.is_file()]
        shutil.rmtree(inc)
    cat.Catalog(s.catalog_url).audit(f"site:{peer}", "delete", f"{dataset}@{version}", "withdrawn", {
        "event": event.get("id"), "agreement": event.get("agreement"), "files": ledger,
        "reason": event.get("reason")})
    return {"event": event.get("id"), "site": site_name(s), "deleted": ledger}


def _proof(p: Any, s: Settings) -> dict[str, Any]:
    import hashlib

    return {"path": str(p.relative_to(s.files_root)), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "bytes": p.stat().st_size}


def _stored_proof(st: Any, key: str) -> dict[str, Any]:
    """A stored file's key, checksum and size (streamed), read before its withdrawal deletes it."""
    import hashlib

    h, n = hashlib.sha256(), 0
    with st.open_input(key) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            n += len(chunk)
    return {"path": key, "sha256": h.hexdigest(), "bytes": n}


_LOOP: threading.Thread | None = None


def start_loop() -> None:
    """Scan and deliver every ``DATALAB_OUTBOX_INTERVAL`` seconds (default 5) in this process, once."""
    global _LOOP
    s = settings()
    if _LOOP is not None or not s.site or s.outbox_interval == 0:
        return
    interval = s.outbox_interval

    def loop() -> None:
        while True:
            try:
                scan()
                deliver()
            except Exception as e:  # never let the loop die; the next round retries
                print(f"federation outbox: {e.__class__.__name__}: {e}", flush=True)
            time.sleep(interval)

    _LOOP = threading.Thread(target=loop, name="federation-outbox", daemon=True)
    _LOOP.start()
