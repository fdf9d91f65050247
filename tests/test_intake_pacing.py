"""Intake pacing (issue 21): a contract's pushes wait while its processing runs and is behind.

Against real catalogs (SQLite and PostgreSQL) for the rule, and a real
``datalab serve`` for the answer a firm gets: a 429 with Retry-After before
anything is stored, one counted audit summary, and ``Client.push`` pushing
again until the runs have caught up.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from datalab.intake import landing, pacing
from datalab.store import catalog as cat
from datalab.store import state
from datalab.timeseries import sample
from tests.conftest import PRESS, PUMPS, SPINDLE
from tests.service_harness import lab_env, sample_file, served_copy, use_lab


def _push(c, tmp_path: Path, seed: int) -> str:
    f = sample.write(sample.generate(c, 30, seed=seed, start=dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
                                     + dt.timedelta(days=seed)), tmp_path / f"{seed}.csv")
    rec = landing.push(c, [f])
    assert rec.accepted, rec.reasons
    return rec.delivery_id


def test_a_contract_waits_only_while_its_processing_runs_and_is_behind(
        catalog_url: str, lab: Path, tmp_path: Path, contracts, monkeypatch: pytest.MonkeyPatch) -> None:
    from datalab.config import settings

    monkeypatch.setenv("DATALAB_CATALOG_URL", catalog_url)
    monkeypatch.setenv("DATALAB_INTAKE_MAX_WAITING", "3")
    c, other = contracts[PUMPS], contracts[PRESS]
    ids = [_push(c, tmp_path, k) for k in range(1, 5)]
    _push(other, tmp_path, 9)
    s, now = settings(), dt.datetime.now(dt.UTC)
    assert state.backlog(c.id, now - dt.timedelta(minutes=5), s) == state.Backlog(4, None)
    # Four wait, but nothing has processed the contract yet (no daemon, a lab filled before its first run): taken.
    assert pacing.must_wait(c.id, s, now) is None

    state.set_stage(ids[0], "validated", validation_ok=True)  # the runs are going: one just ended
    w = pacing.must_wait(c.id, s, now)
    assert w is not None and (w.contract, w.waiting, w.bound, w.retry_after_s) == (c.id, 3, 3, 1)
    assert c.id in w.message and "DATALAB_INTAKE_MAX_WAITING" in w.message and "nothing of this push was stored" in w.message
    assert pacing.must_wait(other.id, s, now) is None  # one contract's backlog is its own
    # The runs stopped (nothing ended for LIVE_S): pushes are taken again, the runs catch up later.
    assert pacing.must_wait(c.id, s, now + dt.timedelta(seconds=pacing.LIVE_S + 1)) is None

    state.set_stage(ids[1], "failed", validation_ok=None)  # a failed run ends a delivery's wait too
    assert pacing.must_wait(c.id, s, now) is None  # 2 wait, under the bound
    _push(c, tmp_path, 5)
    assert pacing.must_wait(c.id, s, now).waiting == 3

    # Only deliveries received within WINDOW_S count: older ones (a run that never comes) do not hold pushes.
    later = now + dt.timedelta(seconds=pacing.WINDOW_S + 5)
    with cat.Catalog(catalog_url).begin() as conn:  # the runs still end deliveries, then
        conn.execute(cat.processing.update().where(cat.processing.c.delivery_id == ids[0])
                     .values(updated_at=later.isoformat(timespec="microseconds")))
    assert state.backlog(c.id, later - dt.timedelta(seconds=pacing.WINDOW_S), s).waiting == 0
    assert pacing.must_wait(c.id, s, later) is None
    assert pacing.must_wait(c.id, s, now) is not None

    monkeypatch.setenv("DATALAB_INTAKE_MAX_WAITING", "0")  # off
    assert pacing.must_wait(c.id, settings(), now) is None


# --- the service ----------------------------------------------------------------------------------------------

PUSH = "/v1/provider/contracts/spindle-telemetry/deliveries"
INTAKE = "/v1/provider/contracts/spindle-telemetry/intake"


@pytest.mark.slow
def test_the_service_asks_a_push_to_wait_and_the_client_pushes_again(published_template: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    from datalab.client import Client
    from datalab.config import settings

    with served_copy(published_template, tmp_path) as lab:
        lab.server.stop()
        lab.server.env = {"DATALAB_INTAKE_MAX_WAITING": "2"}
        lab.server.start()
        files = [sample_file(SPINDLE, tmp_path, 200, seed) for seed in (11, 12, 13, 14)]
        with use_lab(lab.home, lab.contracts), cat.Catalog(settings().catalog_url).begin() as conn:
            # the template's run (moments ago, or not) is long over: nothing processes the contract now
            conn.execute(cat.processing.update().values(updated_at="2026-01-01T00:00:00.000000+00:00"))

        def push(f: Path, key: str) -> object:
            with lab.as_("firm-a") as c:
                return c.post(PUSH, files=[("file", (f.name, f.read_bytes(), "text/csv"))],
                              headers={"Idempotency-Key": key})

        def receipts() -> list[dict]:
            with lab.as_("firm-a") as c:
                return c.get("/v1/provider/receipts", params={"limit": 1000}).json()

        def end(delivery: str) -> None:
            with use_lab(lab.home, lab.contracts):
                state.set_stage(delivery, "validated", validation_ok=True)

        first, second = push(files[0], "k1"), push(files[1], "k2")
        assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
        # Two wait, the bound, but nothing processed the contract lately: the third is taken.
        third = push(files[2], "k3")
        assert third.status_code == 201, third.text
        end(first.json()["delivery_id"])  # the runs are going, and two still wait: at the bound
        before = len(receipts())

        refused = push(files[3], "k4")
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        msg = refused.json()["error"]
        assert SPINDLE in msg and "2 accepted deliveries wait" in msg and "DATALAB_INTAKE_MAX_WAITING" in msg, msg
        assert len(receipts()) == before  # nothing stored, no receipt
        # The question before a body is sent again: the same rule, no body, not a refusal.
        with lab.as_("firm-a") as c:
            asked = c.get(INTAKE)
        assert asked.status_code == 200 and asked.headers["Retry-After"] == "1", asked.text
        body = asked.json()
        assert body["open"] is False and body["waiting"] == 2 and body["bound"] == 2 and body["reason"] == msg
        with lab.as_("firm-b") as c:  # another firm's contract does not exist for it
            assert c.get(INTAKE).status_code == 404
        with lab.as_("firm-a-ro") as c:  # a token that cannot push has nothing to ask
            assert c.get(INTAKE).status_code == 403
        staging = lab.home / "staging" / "http"
        assert not any(p.is_file() for p in staging.rglob("*")) if staging.exists() else True
        # A push again of one already landed stores nothing new: its receipt, not a wait.
        again = push(files[2], "k3")
        assert again.status_code == 200 and again.json()["delivery_id"] == third.json()["delivery_id"], again.text

        # The client waits as asked and pushes again; once the runs catch up, the push is taken.
        waited = threading.Event()
        heard: list[tuple[str, int]] = []

        def on_wait(message: str, seconds: int) -> None:
            heard.append((message, seconds))
            waited.set()

        got: list[object] = []
        with Client(lab.server.url, lab.tokens["firm-a"]) as client:
            t = threading.Thread(target=lambda: got.append(client.push("spindle-telemetry", [files[3]],
                                                                       on_wait=on_wait)))
            t.start()
            # Told to wait by its push, then at least once more by the question it asks before
            # sending the body again (GET .../intake), and only then do the runs catch up.
            deadline = time.monotonic() + 30
            while len(heard) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(heard) >= 2, heard
            end(second.json()["delivery_id"])
            t.join(60)
            assert not t.is_alive() and got and got[0].accepted, got
            assert heard and heard[0][1] == 1 and SPINDLE in heard[0][0]
            assert len(receipts()) == before + 1
            # The contract is at its bound again (the third and the client's wait). Told to wait a
            # moment ago, the same client asks before its next push instead of sending the body.
            heard.clear()
            t = threading.Thread(target=lambda: got.append(client.push(
                "spindle-telemetry", [sample_file(SPINDLE, tmp_path, 200, 15)], on_wait=on_wait)))
            t.start()
            deadline = time.monotonic() + 30
            while not heard and time.monotonic() < deadline:
                time.sleep(0.05)
            assert heard, "the client did not wait"
            end(third.json()["delivery_id"])
            t.join(60)
        assert not t.is_alive() and len(got) == 2 and got[1].accepted, got
        assert len(receipts()) == before + 2

        # Past its patience, the client gives up with the lab's answer.
        with use_lab(lab.home, lab.contracts):
            cs = settings()
            waiting = state.backlog(SPINDLE, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), cs).waiting
        assert waiting == 2  # the client's two pushes: at the bound
        from datalab.errors import DatalabError

        with Client(lab.server.url, lab.tokens["firm-a"]) as client, pytest.raises(DatalabError) as e:
            client.push("spindle-telemetry", [sample_file(SPINDLE, tmp_path, 200, 16)], busy_wait_s=0)
        assert "429" in str(e.value) or "wait for processing" in str(e.value)

        # The CLI over HTTP (DATALAB_URL/TOKEN) waits the same way and says so on stderr.
        env = lab_env(lab.home, lab.contracts)
        env.update(DATALAB_URL=lab.server.url, DATALAB_TOKEN=lab.tokens["firm-a"],
                   DATALAB_HOME=str(tmp_path / "client"))
        cli = subprocess.Popen([sys.executable, "-m", "datalab.cli.commands", "push", "spindle-telemetry",
                                str(sample_file(SPINDLE, tmp_path, 200, 17))], env=env, cwd=str(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        told = threading.Event()
        err: list[str] = []

        def read_stderr() -> None:
            for line in cli.stderr:
                err.append(line)
                if "the lab asks this push to wait" in line:
                    told.set()

        reader = threading.Thread(target=read_stderr)
        reader.start()
        try:
            assert told.wait(60), "".join(err)
            with use_lab(lab.home, lab.contracts):
                for r in receipts():
                    if (state.get(r["delivery_id"]) or {}).get("stage") != "validated":
                        state.set_stage(r["delivery_id"], "validated", validation_ok=True)
            out, _ = cli.communicate(timeout=120)
        finally:
            cli.kill()
            reader.join(10)
        assert cli.returncode == 0 and "ACCEPTED" in out, (out, "".join(err))
        assert SPINDLE in "".join(err) and "DATALAB_INTAKE_MAX_WAITING" in "".join(err)

        lab.server.stop()  # flushes the counted refusals
        with use_lab(lab.home, lab.contracts):
            entries = cat.Catalog(settings().catalog_url).audit_entries()
        summaries = [e for e in entries if e.action == "ratelimit" and e.subject == "waiting"]
        assert summaries and all(e.actor == f"waiting:{SPINDLE}" for e in summaries), summaries
        # The pushes refused are the test's own, the client's first, the impatient client's and the
        # CLI's first: every other wait was a question (GET .../intake), which is not a refusal and
        # sends no body, the client's second push included.
        assert sum(e.detail["count"] for e in summaries) == 4, summaries
        assert "DATALAB_INTAKE_MAX_WAITING" in summaries[-1].detail["reason"]


def test_the_backlog_query_reads_an_index_range_also_in_a_catalog_made_before_its_index(
        lab: Path, tmp_path: Path, contracts) -> None:
    """The statement a push adds reads recent delivery ids of the contract, not the contract's history."""
    from datalab.config import settings

    c = contracts[PUMPS]
    _push(c, tmp_path, 1)
    s = settings()
    engine = cat.Catalog(s.catalog_url).engine
    with engine.begin() as conn:  # a catalog from before the index
        conn.exec_driver_sql("DROP INDEX ix_dl_deliveries_contract_recent")
    cat._ENGINES.pop(s.catalog_url).dispose()
    engine = cat.Catalog(s.catalog_url).engine  # opening it again adds the index
    seen: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, *a) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert state.backlog(c.id, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), s).waiting == 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    ((statement, params),) = [x for x in seen if "dl_deliveries" in x[0]]
    with engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params))
    assert "USING INDEX ix_dl_deliveries_contract_recent (contract_id=? AND id>?)" in plan, plan
