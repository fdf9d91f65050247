"""The catalog (receipts, audit chain, Iceberg SQL catalog) on SQLite and, when one answers, PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from datalab.intake import landing
from datalab.store import catalog as cat
from datalab.timeseries import sample
from tests.conftest import PUMPS


def test_audit_chain_concurrent_appends(catalog_url: str) -> None:
    c = cat.Catalog(catalog_url)

    def worker(i: int) -> None:
        for j in range(10):
            c.audit(f"w{i}", "push", f"d{i}-{j}", "accepted", {"j": j})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = c.audit_entries()
    assert [e.seq for e in entries] == list(range(1, 41))
    assert c.verify_audit() == []
    with c.begin() as conn:
        conn.execute(sa.delete(cat.audit).where(cat.audit.c.seq == 7))
    assert any("missing" in p or "previous hash" in p for p in c.verify_audit())


def test_receipts_and_iceberg_on_catalog(catalog_url: str, lab: Path, tmp_path: Path, contracts, monkeypatch) -> None:
    monkeypatch.setenv("DATALAB_CATALOG_URL", catalog_url)
    c = contracts[PUMPS]
    p = sample.write(sample.generate(c, 500, seed=1), tmp_path / "a.csv")
    r = landing.push(c, [p])
    assert r.accepted
    assert landing.push(c, [p]).delivery_id == r.delivery_id
    assert landing.get_receipt(r.delivery_id, tenant="oulu-pumps").rows == r.rows
    from datalab.errors import NotFound

    with pytest.raises(NotFound):
        landing.get_receipt(r.delivery_id, tenant="bavaria-spindle")  # another firm cannot see it
    import pyarrow as pa

    from datalab.config import settings
    from datalab.store.publish import iceberg_catalog

    ice = iceberg_catalog(settings())
    t = ice.create_table("datalab.probe", schema=pa.schema([("a", pa.int64())]))
    t.append(pa.table({"a": [1, 2, 3]}))
    assert len(ice.load_table("datalab.probe").scan().to_arrow()) == 3


def test_sqlite_write_gate_is_given_back_on_rollback_and_queues_processes(tmp_path: Path) -> None:
    """Writers take the gate at their first write and give it back at commit or rollback, in every process."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'gate.db'}"
    c = cat.Catalog(url)
    with pytest.raises(RuntimeError), c.begin() as conn:
        conn.execute(cat.audit_head.update().where(cat.audit_head.c.id == 1).values(seq=cat.audit_head.c.seq))
        raise RuntimeError("rolled back while holding the gate")
    done = threading.Event()

    def other() -> None:
        c.audit("t", "probe", "x", "ok")
        done.set()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    t.join(30)
    assert done.is_set(), "the gate was not given back by the rollback"
    # a read-only transaction never takes it: a writer in another process proceeds while it is open
    code = ("import sys; from datalab.store import catalog as cat; c = cat.Catalog(sys.argv[1]); "
            "[c.audit('p', 'probe', str(i), 'ok') for i in range(20)]")
    with c.begin() as conn:
        conn.execute(sa.select(cat.audit_head)).first()
        procs = [subprocess.Popen([sys.executable, "-c", code, url]) for _ in range(2)]
        assert [p.wait(60) for p in procs] == [0, 0]
    for _ in range(3):
        c.audit("t", "probe", "y", "ok")
    assert (tmp_path / "gate.db.writelock").exists()
    assert c.verify_audit() == [] and len(c.audit_entries()) == 1 + 40 + 3


def test_tables_another_process_creates_at_the_same_moment_are_taken_as_made(catalog_url: str) -> None:
    """Two processes starting together both find a table missing; the second CREATE must not fail the request.

    The race is made certain here: just before this process creates the
    table, "another process" (a second engine) creates it. Plain
    ``create_all`` then fails ("already exists" in SQLite, a duplicate in
    PostgreSQL), as it did in the service when its two workers took their
    first pushes together (a 500, the push not taken); ``create_tables``
    looks again and goes on.
    """
    md = sa.MetaData()
    table = sa.Table("dl_race_probe", md, sa.Column("k", sa.String(20), primary_key=True))
    other = sa.create_engine(catalog_url)

    def the_other_process_wins(target, connection, **kw) -> None:
        if connection.engine is not other:  # (its own CREATE fires this too)
            md.create_all(other, tables=[table])

    sa.event.listen(table, "before_create", the_other_process_wins)
    engine = sa.create_engine(catalog_url)
    try:
        with pytest.raises(sa.exc.DBAPIError):
            md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE dl_race_probe"))
        cat.create_tables(md, engine)
        with engine.begin() as conn:
            conn.execute(table.insert().values(k="made"))
            assert conn.execute(sa.select(table.c.k)).scalar_one() == "made"
    finally:
        sa.event.remove(table, "before_create", the_other_process_wins)
        engine.dispose()
        other.dispose()


def test_a_stage_without_statistics_keeps_the_recorded_ones(catalog_url: str, lab: Path, tmp_path: Path, contracts,
                                                           monkeypatch) -> None:
    """set_stage merges statistics; a stage set without any (a verdict) leaves them as they were, on both catalogs."""
    from datalab.store import state

    monkeypatch.setenv("DATALAB_CATALOG_URL", catalog_url)
    c = contracts[PUMPS]
    one, two = (landing.push(c, [sample.write(sample.generate(c, 50, seed=k), tmp_path / f"{k}.csv")]).delivery_id
                for k in (1, 2))
    assert state.get(one) is None and state.get(two) is None
    state.set_stage(one, "failed", validation_ok=False)  # no row yet: made, with no statistics
    assert state.get(one)["stage"] == "failed" and state.get(one)["stats"] == {}
    state.set_stage(one, "raw", raw_path="raw/x.parquet", stats={"raw": {"rows": 3}})
    state.set_stage(one, "curated", curated_path="c/x.parquet", stats={"curated": {"rows_out": 2}})
    state.set_stage(one, "validated", validation_ok=True, validation={"success": True, "evaluated": 4})
    got = state.get(one)
    assert got["stage"] == "validated" and got["validation_ok"] is True
    assert got["stats"] == {"raw": {"rows": 3}, "curated": {"rows_out": 2}}
    assert got["validation"] == {"success": True, "evaluated": 4}
    assert got["raw_path"] == "raw/x.parquet" and got["curated_path"] == "c/x.parquet"
    state.set_stage(two, "validated", validation_ok=True)  # another delivery's row is not touched
    assert state.get(one)["stage"] == "validated" and state.get(two)["stats"] == {}
