"""DSP transfer process (HTTP pull): data addresses, resumable verified downloads, replicas.

The provider answers a TransferRequestMessage for a finalized agreement with
a TransferStartMessage whose data address carries a random bearer secret
bound to that transfer and valid for ``ADDRESS_TTL_S``; only its hash is
stored. The consumer downloads the version's files through that address
into ``$DATALAB_HOME/federation/incoming/<agreement>/`` (``Range`` resumes a
file after an interruption), checks every sha256 against the manifest, and
only then moves the complete set into ``versions/<dataset>/<version>/`` with
one rename and registers it in its catalog. A crash at any point leaves
either no replica or the complete one; partial downloads are never read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from datalab.config import Settings, safe_segment, settings
from datalab.errors import DatalabError, IntegrityError, NotFound
from datalab.federation import dsp
from datalab.federation.identity import db
from datalab.store import catalog as cat
from datalab.store.manifest import Manifest
from datalab.store.storage import store, version_key

ADDRESS_TTL_S = 15 * 60

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
  pid TEXT PRIMARY KEY, role TEXT NOT NULL, peer TEXT NOT NULL, peer_pid TEXT, consumer_pid TEXT NOT NULL,
  agreement_id TEXT NOT NULL, state TEXT NOT NULL, secret_hash TEXT, expires REAL, address TEXT, reason TEXT,
  callback TEXT, created TEXT NOT NULL, updated TEXT NOT NULL);
"""
TRANSITIONS = {"REQUESTED": {"STARTED", "TERMINATED"}, "STARTED": {"COMPLETED", "TERMINATED", "SUSPENDED"},
               "SUSPENDED": {"STARTED", "TERMINATED"}, "COMPLETED": set(), "TERMINATED": set()}


class TransferRefused(DatalabError):
    """A transfer the provider will not start, or a data address that is not (or no longer) valid."""


@dataclass(frozen=True)
class Transfer:
    pid: str
    role: str
    peer: str
    peer_pid: str | None
    consumer_pid: str
    agreement_id: str
    state: str
    secret_hash: str | None
    expires: float | None
    address: dict[str, Any] | None
    reason: str | None
    callback: str | None

    @property
    def provider_pid(self) -> str:
        return self.pid if self.role == "provider" else str(self.peer_pid or "")

    def message(self) -> dict[str, Any]:
        return {"@context": dsp.CONTEXT, "@type": "TransferProcess", "providerPid": self.provider_pid,
                "consumerPid": self.consumer_pid, "state": self.state}


_COLS = "pid, role, peer, peer_pid, consumer_pid, agreement_id, state, secret_hash, expires, address, reason, callback"


def _conn(s: Settings | None) -> sqlite3.Connection:
    c = db(s)
    c.executescript(SCHEMA)
    return c


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(r: Any) -> Transfer | None:
    if r is None:
        return None
    v = list(r)
    v[9] = json.loads(v[9]) if v[9] else None
    return Transfer(*v)


def create(role: str, peer: str, consumer_pid: str, agreement_id: str, callback: str | None = None,
           pid: str | None = None, s: Settings | None = None) -> Transfer:
    pid = pid or f"urn:uuid:{uuid.uuid4()}"
    with closing(_conn(s)) as c:
        c.execute("INSERT INTO transfers VALUES (?,?,?,?,?,?,'REQUESTED',NULL,NULL,NULL,NULL,?,?,?)",
                  (pid, role, peer, consumer_pid if role == "provider" else None, consumer_pid, agreement_id,
                   callback, _now(), _now()))
    return get(pid, s)


def get(pid: str, s: Settings | None = None, peer: str | None = None) -> Transfer:
    with closing(_conn(s)) as c:
        t = _row(c.execute(f"SELECT {_COLS} FROM transfers WHERE pid=?", (pid,)).fetchone())
    if t is None or (peer is not None and t.peer != peer):
        raise NotFound(f"no transfer process {pid[:80]!r}" + (f" with {peer}" if peer else ""))
    return t


def advance(pid: str, state: str, s: Settings | None = None, **fields: Any) -> Transfer:
    """Move transfer ``pid`` to ``state`` if the DSP transfer state machine allows it (atomic)."""
    with closing(_conn(s)) as c:
        c.execute("BEGIN IMMEDIATE")
        try:
            cur = _row(c.execute(f"SELECT {_COLS} FROM transfers WHERE pid=?", (pid,)).fetchone())
            if cur is None:
                raise NotFound(f"no transfer process {pid[:80]!r}")
            if state not in TRANSITIONS[cur.state]:
                raise TransferRefused(f"transfer is {cur.state}: it cannot become {state}")
            sets = ", ".join(f"{k}=?" for k in fields)
            vals = [json.dumps(v) if k == "address" else v for k, v in fields.items()]
            c.execute(f"UPDATE transfers SET state=?, updated=?{', ' + sets if sets else ''} WHERE pid=?",
                      (state, _now(), *vals, pid))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
    return get(pid, s)


# -- provider ---------------------------------------------------------------------


def start(t: Transfer, base_url: str, s: Settings | None = None) -> tuple[Transfer, dict[str, Any]]:
    """Issue the data address of provider transfer ``t``: STARTED, secret stored hashed, valid minutes."""
    secret = secrets.token_urlsafe(32)
    t = advance(t.pid, "STARTED", s, secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                expires=time.time() + ADDRESS_TTL_S)
    address = {"@type": "DataAddress", "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
               "endpoint": f"{base_url}/dsp/data/{t.pid}",
               "endpointProperties": [{"@type": "EndpointProperty", "name": "authorization", "value": secret},
                                      {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
                                      {"@type": "EndpointProperty", "name": "expires",
                                       "value": dt.datetime.fromtimestamp(t.expires or 0, dt.UTC).isoformat()}]}
    return t, address


def data_transfer(pid: str, authorization: str | None, s: Settings | None = None) -> Transfer:
    """The provider transfer a data request may read, or TransferRefused (wrong secret, expired, not started)."""
    try:
        t = get(pid, s)
    except NotFound:
        raise TransferRefused("unknown data address") from None
    secret = (authorization or "").removeprefix("Bearer ").strip()
    if t.role != "provider" or not t.secret_hash or not secrets.compare_digest(
            hashlib.sha256(secret.encode()).hexdigest(), t.secret_hash):
        raise TransferRefused("wrong or missing secret for this data address")
    if t.state != "STARTED":
        raise TransferRefused(f"the transfer is {t.state}")
    if time.time() > (t.expires or 0):
        raise TransferRefused("the data address expired; request a new transfer")
    return t


# -- consumer -----------------------------------------------------------------------


def incoming_dir(agreement_id: str, s: Settings) -> Path:
    """Where a replica's files land while they download (on this machine: home, or the scratch folder)."""
    return s.files_root / "federation" / "incoming" / hashlib.sha256(agreement_id.encode()).hexdigest()[:24]


def _download(url: str, secret: str, dst: Path, size: int, sha: str,
              progress: Callable[[int], None] | None = None) -> None:
    """Download ``url`` into ``dst`` (resuming ``dst.part`` by Range), verify sha256, then rename."""
    part = dst.with_suffix(dst.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    headers = {"Authorization": f"Bearer {secret}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    h = hashlib.sha256()  # hashed while written: the file is read once
    if have:
        with open(part, "rb") as f:
            while b := f.read(8 << 20):
                h.update(b)
    if have < size or size == 0:
        with httpx.stream("GET", url, headers=headers, timeout=60) as r:
            if r.status_code == 200 and have:
                have = 0  # the server ignored the range: start over
                part.unlink(missing_ok=True)
                h = hashlib.sha256()
            elif r.status_code not in (200, 206):
                r.read()
                raise TransferRefused(f"{url}: {r.status_code} {r.text[:200]}")
            with open(part, "ab") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
                    h.update(chunk)
                    if progress:
                        progress(len(chunk))
                f.flush()
                os.fsync(f.fileno())
    if h.hexdigest() != sha:
        part.unlink()
        raise IntegrityError(f"{url}: sha256 {h.hexdigest()} does not match the manifest's {sha}; the file is discarded")
    os.replace(part, dst)


def fetch_and_register(t: Transfer, site: str, purpose: str, expect: tuple[str, str], s: Settings | None = None,
                       progress: Callable[[int], None] | None = None) -> Manifest:
    """Download transfer ``t``'s files, verify them, and register the replica; its manifest."""
    s = s or settings()
    addr = t.address or {}
    props = {p["name"]: p["value"] for p in addr.get("endpointProperties", [])}
    endpoint, secret = str(addr.get("endpoint", "")), props.get("authorization", "")
    r = httpx.get(endpoint + "/manifest", headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    if r.status_code != 200:
        raise TransferRefused(f"{site} refused the manifest ({r.status_code}): {r.text[:300]}")
    m = r.json()
    if (safe_segment(str(m.get("dataset")), "dataset"), safe_segment(str(m.get("version")), "version")) != expect:
        raise TransferRefused(f"{site} sent {m.get('dataset')}@{m.get('version')}, the agreement is for "
                              f"{expect[0]}@{expect[1]}")
    inc = incoming_dir(t.agreement_id, s)
    inc.mkdir(parents=True, exist_ok=True)
    files = m.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in files):
        raise TransferRefused(f"{site} sent a manifest whose 'files' is not a list of files with sha256 and bytes")
    for i, f in enumerate(files):
        dst = inc / f"part-{i:05d}.parquet"
        if dst.exists() and _sha(dst) == f["sha256"]:
            continue
        _download(f"{endpoint}/files/{i}", secret, dst, int(f["bytes"]), f["sha256"], progress)
    card = httpx.get(endpoint + "/card", headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    return register_replica(m, inc, site, t, purpose, card.text if card.status_code == 200 else "", s)


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(8 << 20):
            h.update(b)
    return h.hexdigest()


class AlreadyHere(DatalabError):
    """The version number is already in this site's catalog: a replica never replaces a version."""

    hint = "use the version that is here (`datalab pull`), or ask for another version"


def refuse_existing(name: str, version: str, s: Settings) -> None:
    """AlreadyHere if ``name@version`` is in this site's catalog, local or a replica.

    Checked before a replication negotiates (no agreement, no download for a
    copy that could never be registered) and again just before registering,
    against a race with a publish or another replication.
    """
    with cat.Catalog(s.catalog_url).begin() as conn:
        row = conn.execute(sa.select(cat.dataset_versions).where(
            (cat.dataset_versions.c.dataset == name) & (cat.dataset_versions.c.version == version))).first()
    if row is None:
        return
    origin = "a local version"
    if str(row.table_ident).startswith("replica:"):
        origin = f"a replica from {str(row.table_ident).removeprefix('replica:')}"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            rep = json.loads(store(s).read_text(row.manifest_path))["replica"]
            origin += f" for {rep['purpose']}"
    raise AlreadyHere(f"{name}@{version} is already in this site's catalog ({origin}, {row.manifest_path}); "
                      "a replica never replaces a version")


def register_replica(m: dict[str, Any], inc: Path, site: str, t: Transfer, purpose: str, card: str,
                     s: Settings) -> Manifest:
    """Move verified files from ``inc`` to ``versions/<dataset>/<version>`` in one rename; add the catalog row.

    ``m``: the manifest the provider's data address sent (its files without paths here).
    """
    name, version = str(m["dataset"]), str(m["version"])
    st = store(s)
    final = st.local(version_key(name, version))
    catalog = cat.Catalog(s.catalog_url)
    refuse_existing(name, version, s)
    for i in range(len(m["files"])):  # each was verified by sha256 as it landed (``_download``)
        if not (inc / f"part-{i:05d}.parquet").is_file():
            raise IntegrityError(f"{inc / f'part-{i:05d}.parquet'}: missing; nothing registered")
    rel = version_key(name, version)
    doc = {"lineage": {"deliveries": []}, **m, "files": [{**f, "path": f"{rel}/part-{i:05d}.parquet"} for i, f in enumerate(m["files"])],
           "replica": {"site": site, "agreement": t.agreement_id, "purpose": purpose, "transfer": t.consumer_pid,
                       "provider_transfer": t.provider_pid, "received": _now()}}
    rm = Manifest.from_dict(doc, where=f"manifest of {name}@{version} from {site}")
    (inc / "manifest.json").write_text(json.dumps(rm.to_dict(), indent=2, default=str))
    (inc / "card.md").write_text(card + f"\n\n## Provenance\n\nReplica of `{name}@{version}` from site **{site}**, "
                                 f"received {doc['replica']['received']} under DSP agreement `{t.agreement_id}`; "
                                 f"usable only for the purpose `{purpose}`.\n")
    if st.is_local:
        if final.exists():  # a leftover of a crash between the rename and the catalog row: not registered, replace it
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(inc, final)
    else:  # uploaded under the version's key (a leftover of a crash is overwritten), then the local copy goes
        st.delete_prefix(rel)
        for p in sorted(inc.iterdir()):
            st.upload(p, f"{rel}/{p.name}")
        shutil.rmtree(inc)
    with catalog.begin() as conn:
        conn.execute(cat.dataset_versions.insert().values(
            dataset=name, version=version, table_ident=f"replica:{site}", snapshot_id=int(rm.snapshot_id or 0),
            content_key=hashlib.sha256(json.dumps(doc["files"], sort_keys=True).encode()).hexdigest(),
            manifest_path=f"{rel}/manifest.json", status="active", created_at=_now()))
        catalog.audit("federation", "replica", f"{name}@{version}", "registered",
                      {"site": site, "agreement": t.agreement_id, "purpose": purpose, "files": len(rm.files)}, conn=conn)
    return rm
