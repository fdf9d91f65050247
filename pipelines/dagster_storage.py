"""The local profile's Dagster event log: Dagster's SQLite storage, with its connections kept open.

Dagster's ``SqliteEventLogStorage`` opens a new SQLAlchemy engine and a new
SQLite connection for every statement it runs, and closes them after (it
cannot know which processes share the files). In a run over 50 small
deliveries that is about 7,000 engines for 860 events: each event is
written to the run's file and mirrored to the index file, and each
per-delivery metadata record asks twice whether a partition exists. The
last connection to a WAL-mode file checkpoints it on close, so every
statement also paid a checkpoint. Together that was about a fifth of a
small delivery's time (docs/performance.md, issue 21).

This subclass keeps one engine, and one open connection, per file for the
index and the few most recent runs; it also remembers the tables and
columns it found (they are never dropped while the lab runs: Dagster looked
up the asset key table's columns again for every asset event), and records
an asset event on its asset key's row by an update first, inserting the row
only for a key seen for the first time (Dagster inserts first and updates on
the duplicate-key error, which every event after an asset's first raised).

Its connections commit with ``PRAGMA synchronous=NORMAL`` (Dagster's use
SQLite's default, FULL): in WAL mode a commit then appends to the log
without an fsync, which was a third of an asset event's 2 ms here (two
commits each, the run's file and the index). SQLite's guarantee for WAL
with NORMAL: the files stay consistent whatever happens, and a commit
survives the process crashing; only a power loss or an operating-system
crash can take back the last commits. What that could lose is run
history, never the lab's own records (receipts, states and versions are
in the lab's catalog, which this does not touch). The files, their schema and
their locking are Dagster's own: the UI, the daemon and other processes
read and write them as before (SQLite's WAL mode and busy timeout serialise
writers across processes; within this process Dagster's lock serialises
the connections, as it does for its own). The class is named in
``dagster.yaml`` (``pipelines.cluster.instance_config``); the cluster
profile keeps its events in PostgreSQL and does not use it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any

import sqlalchemy.exc as db_exc
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import AssetKeyTable, SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log as _dagster_sqlite
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sql import get_alembic_config, safe_commit
from sqlalchemy import create_engine, inspect, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

# Open files kept besides the index: a run's events go to its own file, so the runs in
# progress in this process (one at a time, usually) are what is worth keeping.
KEEP_RUN_FILES = 4


@lru_cache(maxsize=1)
def _migrations() -> ScriptDirectory:
    """Dagster's migration scripts for these files, read once per process (Dagster reads them for every file)."""
    return ScriptDirectory.from_config(get_alembic_config(_dagster_sqlite.__file__))


def _create_at_head(engine: Engine) -> None:
    """Dagster's tables in an empty file, WAL mode, stamped at the head revision (what Dagster's _initdb makes)."""
    SqlEventLogStorageMetadata.create_all(engine)
    with engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL;"))
        MigrationContext.configure(conn).stamp(_migrations(), "head")
        safe_commit(conn)


@lru_cache(maxsize=1)
def _run_file_template() -> bytes:
    """A new run file's bytes: Dagster's tables in WAL mode, stamped at the head revision; made once per process.

    Creating a run's file table by table and stamping it took about 30 ms
    for every run (the SQLAlchemy DDL of some twenty tables and indexes), an
    eighth of a small delivery's run. A copy of a file made the same way is
    the same file.
    """
    with tempfile.TemporaryDirectory(prefix="datalab-dagster-") as d:
        path = os.path.join(d, "run.db")
        engine = create_engine(f"sqlite:///{path}")
        try:
            _create_at_head(engine)
            with engine.connect() as conn:
                conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE);"))
        finally:
            engine.dispose()  # the last connection closed: the log is in the file
        with open(path, "rb") as f:
            return f.read()


def _place_template(path: str) -> None:
    """Put the template at ``path`` unless a file is there: written aside, then linked in (never over another)."""
    if os.path.exists(path):
        return
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".new-run-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(_run_file_template())
        os.link(tmp, path)
    except OSError:  # created meanwhile by another process, or no hard links here: Dagster's _initdb does it
        pass
    finally:
        if tmp:
            with suppress(OSError):
                os.unlink(tmp)


def _found_once(seen: set[str], name: str, probe: Callable[[], bool]) -> bool:
    """``probe()`` until it has said yes once: tables and columns are never dropped while the lab runs."""
    if name in seen:
        return True
    if probe():
        seen.add(name)
        return True
    return False


def _wal_synchronous_normal(dbapi_conn: Any, _record: Any) -> None:
    """``synchronous=NORMAL``: a commit appends to the WAL without waiting for the disk (see the module's doc)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that reuses one connection per file instead of one per statement."""

    def __init__(self, base_dir: str, inst_data: Any = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()
        self._asset_key_cols: set[str] = set()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledSqliteEventLogStorage:  # type: ignore[override]
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        if shard != INDEX_SHARD_NAME and shard not in self._initialized_dbs:
            _place_template(self.path_for_shard(shard))  # a new run's file, copied (see _run_file_template)
        engine = create_engine(self.conn_string_for_shard(shard), poolclass=StaticPool,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
        sa_event.listen(engine, "connect", _wal_synchronous_normal)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        runs = [k for k in self._engines if k != INDEX_SHARD_NAME]
        for old in runs[:max(0, len(runs) - KEEP_RUN_FILES)]:
            self._engines.pop(old).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def has_table(self, table_name: str) -> bool:
        return _found_once(self._tables, table_name, lambda: super(PooledSqliteEventLogStorage, self).has_table(table_name))

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """Dagster's ``_initdb`` without reading the migration scripts from disk each time.

        Dagster's reads the scripts to learn the head revision, then does
        nothing to a file that has a revision, and creates the tables of a
        new file and stamps it with the head (reading them again): about
        70 ms for every run's new file, and 35 ms for the index each time an
        instance opens it. Here a file at a revision is left alone after one
        query, and a new, empty file gets Dagster's tables and the head
        revision from the scripts read once. Anything else (a file with
        tables and no revision, another process creating the same file)
        goes to Dagster's own, which knows those cases.
        """
        with engine.connect() as conn:
            if MigrationContext.configure(conn).get_current_revision() is not None:
                return
            fresh = not inspect(conn).get_table_names()
        if fresh:
            try:
                _create_at_head(engine)
                return
            except (db_exc.DatabaseError, sqlite3.DatabaseError):
                pass
        super()._initdb(engine, for_index_shard=for_index_shard)

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        return _found_once(self._asset_key_cols, column_name,
                           lambda: super(PooledSqliteEventLogStorage, self)._has_asset_key_col_on_connection(conn, column_name))

    def _store_asset_event(self, conn: Connection, event: EventLogEntry, event_id: int) -> None:
        """Dagster's own (``SqlEventLogStorage._store_asset_event``): the same row, updated first."""
        if not (event.dagster_event and event.dagster_event.asset_key):
            return
        values = self._get_asset_entry_values(event, event_id, self._has_asset_key_index_cols_on_connection(conn))
        if not values:
            return
        key = event.dagster_event.asset_key.to_string()
        update = AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == key)
        if conn.execute(update).rowcount:
            return
        try:
            conn.execute(AssetKeyTable.insert().values(asset_key=key, **values))
        except db_exc.IntegrityError:  # another process inserted it since
            conn.execute(update)

    def dispose(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()
        super().dispose()
