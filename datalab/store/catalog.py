"""The lab's catalog: receipts, processing state, versions and the audit log.

One SQLAlchemy schema, SQLite file by default and PostgreSQL by URL
(``DATALAB_CATALOG_URL``), so the embedded lab and a shared deployment run
the same code. The pyiceberg SQL catalog lives in the same database.

Writes are small and transactional: a receipt is written in one transaction
with its files and its audit entry, so after a crash it is complete or absent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

deliveries = sa.Table(
    "dl_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("contract_id", sa.String(200), nullable=False),  # indexed with id, below
    sa.Column("contract_version", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reasons", sa.Text, nullable=False, default="[]"),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("idem_key", sa.String(64), nullable=False, unique=True),
    sa.Column("received_at", sa.String(40), nullable=False),
    sa.Column("pushed_by", sa.String(200), nullable=False),
    # A contract's deliveries, and its recent ones by an index range (ids
    # start with their UTC receipt second): the intake's pacing asks once per
    # push (state.backlog), and must not read the contract's whole history.
    # It serves every query by contract the single-column index of catalogs
    # made before it (ix_dl_deliveries_contract_id, kept there) served.
    sa.Index("ix_dl_deliveries_contract_recent", "contract_id", "id"),
)

delivery_files = sa.Table(
    "dl_delivery_files",
    metadata,
    sa.Column("delivery_id", sa.String(64), sa.ForeignKey("dl_deliveries.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("format", sa.String(32)),
    sa.Column("compression", sa.String(16)),
    sa.Column("stored_path", sa.String(512), nullable=False),
    sa.Column("reasons", sa.Text, nullable=False, default="[]"),
)

# What a receipt says beyond its status and reasons (issue 23), in a table of
# its own so that a lab's existing catalog gains it by create_all: whether
# the delivery is a declared correction, its warnings, and the rule that
# decided its status. A delivery without a row here has none of these.
delivery_meta = sa.Table(
    "dl_delivery_meta",
    metadata,
    sa.Column("delivery_id", sa.String(64), sa.ForeignKey("dl_deliveries.id"), primary_key=True),
    sa.Column("correction", sa.Boolean, nullable=False, default=False),
    sa.Column("warnings", sa.Text, nullable=False, default="[]"),
    sa.Column("decided_by", sa.Text, nullable=False, default=""),
)

processing = sa.Table(
    "dl_processing",
    metadata,
    sa.Column("delivery_id", sa.String(64), sa.ForeignKey("dl_deliveries.id"), primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("raw_path", sa.String(512)),
    sa.Column("curated_path", sa.String(512)),
    sa.Column("stats", sa.Text, nullable=False, default="{}"),
    sa.Column("validation_ok", sa.Boolean),
    sa.Column("validation", sa.Text),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

# A curated delivery's first and last time (TIME_INT: microseconds since the
# epoch, or the index; the widest range where it has none), so that a new
# delivery finds the earlier ones whose readings it may repeat by an index
# range instead of reading every earlier delivery's statistics
# (curate.earlier_curated: a firm streaming a delivery a minute has 43,000 in
# a month, and a new delivery's readings are the latest). ``replaces``: its
# readings replace earlier ones rather than keep them (a declared correction).
# Its own table, so that an existing catalog gains it by create_all; the rows
# of deliveries curated before it are filled in from their statistics
# (curate._fill_spans).
curated_spans = sa.Table(
    "dl_curated_spans",
    metadata,
    sa.Column("delivery_id", sa.String(64), sa.ForeignKey("dl_deliveries.id"), primary_key=True),
    sa.Column("contract_id", sa.String(200), nullable=False),
    sa.Column("time_lo", sa.BigInteger, nullable=False),
    sa.Column("time_hi", sa.BigInteger, nullable=False),
    sa.Column("replaces", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_dl_curated_spans_contract_hi", "contract_id", "time_hi"),
)

watermarks = sa.Table(
    "dl_watermarks",
    metadata,
    sa.Column("contract_id", sa.String(200), primary_key=True),
    sa.Column("delivery_id", sa.String(64), primary_key=True),
    sa.Column("entity", sa.String(200), primary_key=True),
    sa.Column("max_time", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.String(40), nullable=False),
)

dataset_versions = sa.Table(
    "dl_dataset_versions",
    metadata,
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("table_ident", sa.String(200), nullable=False),
    sa.Column("snapshot_id", sa.BigInteger, nullable=False),
    sa.Column("content_key", sa.String(64), nullable=False),
    sa.Column("manifest_path", sa.String(512), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="active"),
    sa.Column("created_at", sa.String(40), nullable=False),
)

audit = sa.Table(
    "dl_audit",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(300), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# One row that every audit append updates in its transaction: a portable way
# to serialise appends (row lock on PostgreSQL, write lock on SQLite) so the
# hash chain never forks when two processes write at once.
audit_head = sa.Table(
    "dl_audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

GENESIS = "0" * 64


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


_KEYS: dict[str, bytes] = {}


def audit_key() -> bytes:
    """The key that authenticates audit entries and checkpoints; never stored in the catalog.

    ``DATALAB_AUDIT_KEY`` (hex), else ``$DATALAB_HOME/secrets/audit.key``
    (created once, mode 0600), kept like the pseudonym key. Because the
    chain is an HMAC under this key, whoever can write the database but not
    read the key cannot recompute the hashes of rows they edit. Several
    hosts sharing one PostgreSQL catalog share the key through the variable.
    """
    from datalab.config import lab_key, settings

    s = settings()
    if s.audit_key:
        return s.audit_key
    path = s.secrets / "audit.key"
    cached = _KEYS.get(str(path))
    if cached is not None:
        return cached
    key = lab_key(path)  # written whole under another name, then linked: never read half-written
    _KEYS[str(path)] = key
    return key


def _entry_hash(prev_hash: str, entry: dict[str, Any], key: bytes | None = None) -> str:
    """HMAC-SHA256 under the audit key of the previous hash and the entry: a keyed chain."""
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key if key is not None else audit_key(), (prev_hash + body).encode(), hashlib.sha256).hexdigest()


@dataclass
class AuditEntry:
    seq: int
    ts: str
    actor: str
    action: str
    subject: str
    decision: str
    detail: dict[str, Any] = field(default_factory=dict)


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class WriteGate:
    """One SQLite writer at a time across the lab's threads and processes, queued in the kernel.

    SQLite lets one transaction write at a time; the others wait in its busy
    handler, which sleeps and retries (1, 2, 5 ... 100 ms): under many
    concurrent pushes an unlucky writer keeps losing the race and waits
    seconds while later ones get in. A transaction here takes this gate at
    its first write statement and gives it back at commit or rollback: a
    thread lock inside a process, then an exclusive ``flock`` on a file beside
    the database across processes (the service's workers, the Dagster runs).
    Waiters block in the kernel and are woken when the gate is free, so the
    busy handler is left with nothing to wait for. Reads never take it (WAL
    readers do not block writers).
    """

    def __init__(self, db_path: str):

        self._path = db_path + ".writelock"
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child starts with the gate free and its own file

    def _reset(self) -> None:
        import threading

        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._local = threading.local()  # this thread's depth: a nested write transaction does not lock twice

    def acquire(self) -> None:
        import fcntl

        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            return
        self._thread_lock.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        self._local.depth = 1

    def release(self) -> None:
        import fcntl

        depth = getattr(self._local, "depth", 0)
        if depth > 1:
            self._local.depth = depth - 1
            return
        if depth == 0:
            return
        self._local.depth = 0
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def attach(self, engine: Engine) -> None:
        """Take the gate at a connection's first write of a transaction; give it back when the transaction ends."""

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
            if not conn.info.get("dl_writing") and statement.lstrip()[:7].upper().startswith(_WRITES):
                self.acquire()
                conn.info["dl_writing"] = True

        def _end(conn: Connection) -> None:
            if conn.info.pop("dl_writing", False):
                self.release()

        sa.event.listen(engine, "commit", _end)
        sa.event.listen(engine, "rollback", _end)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        path = url.removeprefix("sqlite:///")
        if path and path != url and not path.startswith(":memory:"):
            WriteGate(path).attach(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


_ENGINES: dict[str, Engine] = {}

# The audit append's statements, built once: each push and pull appends an entry, and building the
# statements anew (coercions, cache keys) cost more than running them.
_HEAD_LOCK = audit_head.update().where(audit_head.c.id == 1).values(seq=audit_head.c.seq)
_HEAD_READ = sa.select(audit_head).where(audit_head.c.id == 1)
_AUDIT_INSERT = audit.insert()
_HEAD_SET = audit_head.update().where(audit_head.c.id == 1).values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))


def create_tables(md: sa.MetaData, engine: sa.Engine, tables: list[sa.Table] | None = None, attempts: int = 5) -> None:
    """``md.create_all`` that another process may run at the same moment.

    ``create_all`` asks whether each table exists and then creates it; two
    processes starting together (the service's workers, a worker and a run)
    could both find a table missing, and the second CREATE failed ("table
    ... already exists" in SQLite, a duplicate type or relation in
    PostgreSQL). The request that hit it answered 500 and its push was not
    taken. A failure of that kind is followed by another look, which finds
    what the other process made.
    """
    for attempt in range(attempts):
        try:
            md.create_all(engine, tables=tables)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as e:
            text = str(e.orig if getattr(e, "orig", None) is not None else e).lower()
            if attempt == attempts - 1 or not ("already exists" in text or "duplicate" in text):
                raise


# Indexes added after catalogs existed: ``create_all`` makes them with a new
# table, :func:`create_later_indexes` in a catalog made before them.
LATER_INDEXES = ("ix_dl_deliveries_contract_recent",)


def create_later_indexes(md: sa.MetaData, engine: sa.Engine) -> None:
    """``CREATE INDEX IF NOT EXISTS`` for each of ``LATER_INDEXES`` (another process may make one at once)."""
    for table in md.tables.values():
        for ix in table.indexes:
            if ix.name not in LATER_INDEXES:
                continue
            try:
                with engine.begin() as conn:
                    conn.execute(sa.schema.CreateIndex(ix, if_not_exists=True))
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as e:
                text = str(e.orig if getattr(e, "orig", None) is not None else e).lower()
                if not ("already exists" in text or "duplicate" in text):
                    raise


class Catalog:
    """Access to the lab's tables. Cheap to create; engines are shared per URL."""

    def __init__(self, url: str):
        self.url = url
        if url not in _ENGINES:
            if url.startswith("sqlite:///"):
                from pathlib import Path

                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = _make_engine(url)
            create_tables(metadata, engine)
            create_later_indexes(metadata, engine)
            # The audit head row exists before any append, so every append
            # serialises on its row lock (two first appends cannot race).
            try:
                with engine.begin() as conn:
                    if conn.execute(sa.select(audit_head.c.id)).first() is None:
                        conn.execute(audit_head.insert().values(id=1, seq=0, hash=GENESIS))
            except sa.exc.IntegrityError:
                pass  # another process created it first
            _ENGINES[url] = engine
        self.engine = _ENGINES[url]

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- audit -------------------------------------------------------------

    def audit(
        self,
        actor: str,
        action: str,
        subject: str,
        decision: str,
        detail: dict[str, Any] | None = None,
        conn: Connection | None = None,
    ) -> int:
        """Append one hash-chained entry; returns its sequence number."""
        if conn is None:
            with self.begin() as c:
                return self.audit(actor, action, subject, decision, detail, c)
        # UPDATE first takes the row (or database) lock, then we read the
        # head we now own: concurrent appends queue here instead of forking.
        conn.execute(_HEAD_LOCK)
        head = conn.execute(_HEAD_READ).one()
        prev_seq, prev_hash = head.seq, head.hash
        entry = {
            "seq": prev_seq + 1,
            "ts": now_iso(),
            "actor": actor,
            "action": action,
            "subject": subject,
            "decision": decision,
            "detail": detail or {},
        }
        h = _entry_hash(prev_hash, entry)
        conn.execute(_AUDIT_INSERT, {**entry, "detail": json.dumps(entry["detail"], sort_keys=True, default=str),
                                     "prev_hash": prev_hash, "hash": h})
        conn.execute(_HEAD_SET, {"new_seq": entry["seq"], "new_hash": h})
        return entry["seq"]

    def audit_entries(
        self, action: str | None = None, subject: str | None = None
    ) -> list[AuditEntry]:
        q = sa.select(audit).order_by(audit.c.seq)
        if action:
            q = q.where(audit.c.action == action)
        if subject:
            q = q.where(audit.c.subject == subject)
        with self.begin() as conn:
            return [
                AuditEntry(r.seq, r.ts, r.actor, r.action, r.subject, r.decision, json.loads(r.detail))
                for r in conn.execute(q)
            ]

    def verify_audit(self) -> list[str]:
        """Recompute the keyed chain; returns the problems found (empty when intact).

        This catches edits by anyone without the audit key; deleting the
        newest entries and moving the head back leaves a shorter chain that
        is still valid, which only an anchor outside the database shows
        (``audit_checkpoints.verify``).
        """
        problems: list[str] = []
        prev_hash, expected_seq = GENESIS, 1
        key = audit_key()
        with self.begin() as conn:
            for r in conn.execute(sa.select(audit).order_by(audit.c.seq)):
                if r.seq != expected_seq:
                    problems.append(f"entry {expected_seq} is missing (next is {r.seq})")
                entry = {
                    "seq": r.seq,
                    "ts": r.ts,
                    "actor": r.actor,
                    "action": r.action,
                    "subject": r.subject,
                    "decision": r.decision,
                    "detail": json.loads(r.detail),
                }
                if r.prev_hash != prev_hash:
                    problems.append(f"entry {r.seq}: previous hash does not match entry {r.seq - 1}")
                if not hmac.compare_digest(_entry_hash(r.prev_hash, entry, key), r.hash):
                    problems.append(f"entry {r.seq}: content does not match its hash "
                                    "(edited, or written without this lab's audit key)")
                prev_hash, expected_seq = r.hash, r.seq + 1
            head = conn.execute(sa.select(audit_head)).first()
        if head is not None and (head.seq != expected_seq - 1 or head.hash != prev_hash):
            problems.append(f"the log ends at entry {expected_seq - 1} but the head says {head.seq}")
        return problems
