"""Issue 17: the service's input is bounded and its policy holds on every path.

Each test here reproduces one finding of the hostile-client probe against
the real server (``datalab serve`` in a subprocess) and failed before the fix.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from datalab.errors import PolicyRefused
from datalab.policy import auth
from datalab.timeseries import readers
from tests.service_harness import Lab, served_copy, use_lab

pytestmark = pytest.mark.slow
SPINDLE_PUSH = "/v1/provider/contracts/spindle-telemetry/deliveries"


@pytest.fixture(scope="module")
def lab(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A served lab with plant-telemetry 1.0.0 (confidential, DE only) and a public-only consumer site."""
    with served_copy(published_template, tmp_path_factory.mktemp("hardening")) as lab:
        with lab.as_("admin") as c:
            r = c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=300)
            assert r.status_code == 200, r.text
        with use_lab(lab.home, lab.contracts):
            auth.add_principal("team-garching", "consumer", None, "garching-open", None, actor="test")
            lab.tokens["team-garching"] = auth.create_token("team-garching", 7, "tests", actor="test")[0]
        yield lab


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MB: what the kernel saw, not what Python thinks."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _gzip_one_line(mib: int) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as z:
        chunk = b"a" * (1 << 20)
        for _ in range(mib):
            z.write(chunk)
    return buf.getvalue()


@pytest.mark.parametrize("header", [False, True], ids=["header-line", "body-line"])
def test_one_endless_line_costs_bounded_memory_database_and_answer(lab: Lab, header: bool) -> None:
    """Item 1: a small gzip of one 96 MiB line is rejected by its line number; memory, catalog and
    answer stay bounded (before: the line was read whole, copied into the reasons twice and returned)."""
    body = _gzip_one_line(96)
    if header:  # a good header, then the endless line
        good = b"machine_id,ts,sensor,value,unit\n"
        body = gzip.compress(good, compresslevel=1) + body  # concatenated gzip members are one stream
    assert len(body) < 1 << 20
    db = lab.home / "catalog.db"
    db_before = db.stat().st_size
    pid = lab.server.proc.pid  # one worker: uvicorn serves in this process
    rss_before = _peak_rss_mb(pid)
    with lab.as_("firm-a") as c:
        r = c.post(SPINDLE_PUSH, content=body, params={"name": "line96m.csv.gz"},
                   headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text[:500]
        assert len(r.content) < 64 << 10, len(r.content)
        rec = r.json()
        assert rec["status"] == "rejected"
        line = 2 if header else 1
        want = f"line {line} is longer than {readers.MAX_LINE_BYTES} bytes"
        assert any(want in why for why in rec["reasons"]), rec["reasons"]
        listing = c.get("/v1/provider/receipts")
        assert listing.status_code == 200 and len(listing.content) < 1 << 20
    assert db.stat().st_size - db_before < 1 << 20
    grew = _peak_rss_mb(pid) - rss_before
    assert grew < 200, f"peak RSS grew by {grew:.0f} MB"


def test_reasons_are_bounded_in_number_and_length() -> None:
    from datalab.intake import landing

    many = [f"r{i} " + "x" * 5000 for i in range(250)]
    out = landing.bound_reasons(many)
    assert len(out) == landing.MAX_REASONS + 1 and out[-1] == "and 150 more"
    assert all(len(r) < readers.MAX_REASON_CHARS + 50 for r in out)
    assert "more characters" in out[0]


def test_receipt_lists_are_paginated(lab: Lab) -> None:
    with lab.as_("firm-a") as c:
        everything = c.get("/v1/provider/receipts", params={"limit": 1000}).json()
        assert len(everything) >= 2
        page = c.get("/v1/provider/receipts", params={"limit": 1, "offset": 1}).json()
        assert [r["delivery_id"] for r in page] == [everything[1]["delivery_id"]]
        assert c.get("/v1/provider/receipts", params={"limit": 100_000}).status_code == 422


DS = "/v1/datasets/plant-telemetry/versions"


def test_a_sites_classification_cap_applies_to_pulls_and_listings(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3: garching-open may hold public data only; plant-telemetry is confidential.
    Before: the manifest answered 200 and the listing showed the dataset."""
    with lab.as_("team-garching") as c:
        assert c.get("/v1/datasets", params={"purpose": "research"}).json() == []
        for what in ("manifest", "card", "files/0"):
            assert c.get(f"{DS}/1.0.0/{what}", params={"purpose": "research"}).status_code == 404
    with lab.as_("team-de") as c:  # munich hosts up to restricted: unchanged
        assert c.get(f"{DS}/1.0.0/manifest", params={"purpose": "research"}).status_code == 200
    from datalab.config import settings
    from datalab.store import pull

    with use_lab(lab.home, lab.contracts):
        monkeypatch.setenv("DATALAB_SITE", "garching-open")
        s = settings()
        with pytest.raises(PolicyRefused, match="site 'garching-open' may hold data up to 'public'"):
            pull.open_dataset("plant-telemetry", "1.0.0", "research", actor="test", s=s)
        with pytest.raises(PolicyRefused, match="rule 'classification'"):
            pull.pull("plant-telemetry@1.0.0", "research", lab.home.parent / "out", actor="test", s=s)
        assert next(d for d in pull.list_datasets(s) if d["dataset"] == "plant-telemetry")["versions"] == []
        from typer.testing import CliRunner

        from datalab.cli.commands import app

        out = CliRunner().invoke(app, ["show", "plant-telemetry@1.0.0"])
        assert out.exit_code != 0 and "classification" in (out.output + str(out.exception))
        monkeypatch.setenv("DATALAB_SITE", "munich")
        assert next(d for d in pull.list_datasets(settings()) if d["dataset"] == "plant-telemetry")["versions"] == ["1.0.0"]
        assert pull.open_dataset("plant-telemetry", "1.0.0", "research", actor="t").collect().height > 0


def test_hidden_datasets_are_not_found_and_refusals_name_no_hidden_firm(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 5: team-fi (Finland) may never reach DE-only plant-telemetry. Before: @9.9.9 listed the
    published versions and @1.0.0 answered 403 naming urn:datalab:bavaria-spindle:spindle-telemetry."""
    with lab.as_("team-fi") as c:
        missing = c.get("/v1/datasets/no-such-set/versions/1.0.0/manifest", params={"purpose": "research"})
        assert missing.status_code == 404
        for v in ("9.9.9", "1.0.0", "latest"):
            r = c.get(f"{DS}/{v}/manifest", params={"purpose": "research"})
            assert r.status_code == 404, r.text
            assert r.json()["error"] == missing.json()["error"].replace("no-such-set", "plant-telemetry")
            assert "1.0.0" not in r.text and "urn:" not in r.text and "spindle" not in r.text
    with lab.as_("team-de") as c:  # reachable: a refusal names the rule, and firms only by the card's labels
        r = c.get(f"{DS}/1.0.0/manifest", params={"purpose": "model-training"})
        # lyon-presses' press-line is internal (the card names it); bavaria-spindle is confidential (a pseudonym)
        assert r.status_code == 403 and "prohibited_purposes" in r.text and "bavaria-spindle" not in r.text, r.text
    from datalab.config import settings
    from datalab.store import pull

    with use_lab(lab.home, lab.contracts):  # locally too: the refusal names the rule and a pseudonym
        monkeypatch.setenv("DATALAB_SITE", "kajaani")
        with pytest.raises(PolicyRefused) as e:
            pull.open_dataset("plant-telemetry", "1.0.0", "research", actor="test", s=settings())
        assert "residency" in str(e.value) and "bavaria-spindle" not in str(e.value) and "firm-" in str(e.value)


def _big_spindle_csv(path: Path, machines: list[str], rows_per_machine: int) -> list[bytes]:
    """Write a long-layout spindle file of random readings; returns byte markers of its first readings.

    The markers are the IEEE-754 bytes of random values: the raw table stores
    readings as float64, where random doubles stay literal even compressed.
    """
    import datetime as dt
    import struct

    import numpy as np
    import polars as pl

    n = rows_per_machine // 4
    t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    frames = []
    for m in machines:
        ts = pl.datetime_range(t0, t0 + dt.timedelta(seconds=n - 1), "1s", eager=True, time_zone="UTC")
        base = pl.DataFrame({"machine_id": m, "ts": ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")})
        for sensor, unit in (("spindle_temp", "Cel"), ("oil_pressure", "bar"), ("vibration", "mm/s"),
                             ("spindle_speed", "/min")):
            frames.append(base.with_columns(sensor=pl.lit(sensor), unit=pl.lit(unit)))
    df = pl.concat(frames).sort("ts", maintain_order=True)
    df = df.with_columns(value=pl.Series(np.random.default_rng().uniform(10.0, 90.0, len(df))))
    df.select("machine_id", "ts", "sensor", "value", "unit").write_csv(path)
    return [struct.pack("<d", v) for v in df.get_column("value").head(200).to_list()]


def _files_holding(home: Path, markers: list[bytes]) -> list[str]:
    """Every file under ``home`` whose bytes contain one of ``markers`` (byte-level, whatever its name)."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and not p.is_symlink() and any(m in p.read_bytes() for m in markers))


def test_a_crash_during_landing_leaves_nothing_withdrawal_misses(published_template: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """Item 4: SIGKILL while a landing writes its raw ``.tmp``; after a restart the firm withdraws the
    contract and no file under the lab holds its readings. Before: the ``.tmp`` (parsed readings) stayed."""
    import threading
    import time

    import httpx
    from typer.testing import CliRunner

    from datalab.cli.commands import app
    from tests.conftest import SPINDLE

    machines = [f"BSW-M{i:02d}" for i in range(10, 14)]
    markers = _big_spindle_csv(tmp_path / "big.csv", machines, 400_000)
    data = (tmp_path / "big.csv").read_bytes()
    with served_copy(published_template, tmp_path / "crash") as lab:
        raw_dir = lab.home / "raw" / "bavaria-spindle" / "spindle-telemetry"

        def push() -> None:
            with contextlib.suppress(httpx.HTTPError), lab.as_("firm-a") as c:
                c.post(SPINDLE_PUSH, content=data, params={"name": "big.csv"},
                       headers={"Content-Type": "application/octet-stream"}, timeout=120)

        t = threading.Thread(target=push, daemon=True)
        t.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tmps = [p for p in raw_dir.glob("*.tmp")] if raw_dir.exists() else []
            if tmps and tmps[0].stat().st_size > 256 << 10:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the landing never wrote its raw .tmp")
        lab.server.kill()
        t.join(30)
        left = list(raw_dir.glob("*.tmp"))
        assert left, "the crash left no .tmp: the test did not hit the window"
        # a stale one from an earlier crash is removed when the service starts; the fresh one is not yet
        stale = lab.home / "curated" / "bavaria-spindle" / "spindle-telemetry" / "d-old.parquet.tmp"
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"PAR1" + b"".join(markers))
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        lab.server.start()
        assert not stale.exists()
        assert _files_holding(lab.home, markers), "nothing held the readings: the byte check would prove nothing"
        with use_lab(lab.home, lab.contracts):
            out = CliRunner().invoke(app, ["contract", "withdraw", SPINDLE, "--reason", "end of cooperation"])
        assert out.exit_code == 0, out.output
        assert _files_holding(lab.home, markers) == []
        assert not raw_dir.exists() or not list(raw_dir.rglob("*"))


def test_rate_limits_per_token_and_address_with_counted_summaries(lab: Lab) -> None:
    """Item 6: before, 6,321 anonymous requests wrote 6,361 audit rows and slowed every push."""
    from datalab.store import catalog as cat

    def rows() -> list[cat.AuditEntry]:
        with use_lab(lab.home, lab.contracts):
            from datalab.config import settings

            return cat.Catalog(settings().catalog_url).audit_entries()

    lab.server.stop()
    lab.server.env = {"DATALAB_RATE_ADDRESS_PER_MIN": "20", "DATALAB_RATE_TOKEN_PER_MIN": "30"}
    lab.server.start()
    try:
        before = len(rows())
        with lab.server.client() as anon:
            answers = [anon.get("/v1/whoami") for _ in range(150)]
            answers += [anon.get("/v1/whoami", headers={"Authorization": "Bearer dl_000000000000_" + "x" * 43})
                        for _ in range(50)]
        codes = [r.status_code for r in answers]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}, codes
        assert int(answers[-1].headers["Retry-After"]) >= 1
        assert "error" in answers[-1].json()
        with lab.as_("firm-a") as c, lab.as_("firm-b") as other:
            got = [c.get("/v1/whoami").status_code for _ in range(40)]
            assert got[:30] == [200] * 30 and set(got[30:]) == {429}, got
            assert other.get("/v1/whoami").status_code == 200  # one token's limit is not another's
        grew = len(rows()) - before
        assert grew <= 20 + 5, f"{grew} audit rows for 180 refused requests"
    finally:
        lab.server.stop()  # flushes the summaries
        lab.server.env = {}
        lab.server.start()
    summaries = [e for e in rows()[before:] if e.action == "ratelimit"]
    assert sum(e.detail["count"] for e in summaries if e.subject == "address") == 180, summaries
    assert sum(e.detail["count"] for e in summaries if e.subject == "token") == 10, summaries


def test_smaller_gaps(lab: Lab, tmp_path: Path) -> None:
    """Item 7: replays audited, 20 KiB part headers refused, tenant/product reachable, principals
    disabled and enabled, last_used_at written."""
    import hashlib

    from tests.conftest import SPINDLE
    from tests.service_harness import sample_file

    data = sample_file(SPINDLE, tmp_path, 40, 77).read_bytes()
    key = "replay-" + hashlib.sha256(data).hexdigest()[:12]
    with lab.as_("firm-a") as c, lab.as_("admin") as admin:
        push = {"files": [("file", ("r.csv", data, "text/csv"))], "headers": {"Idempotency-Key": key}}
        first = c.post(SPINDLE_PUSH, **push)
        assert first.status_code == 201, first.text
        again = c.post(SPINDLE_PUSH, **push)
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        entries = admin.get("/v1/admin/audit", params={"action": "push", "limit": 5000}).json()
        replays = [e for e in entries if e["decision"] == "replayed"]
        assert [e["subject"] for e in replays] == [first.json()["delivery_id"]], replays
        assert replays[0]["detail"]["idempotency_key"] == key
        # a part whose headers (20 KiB) arrive in one piece: 431, as the documentation says
        body = (b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"h.csv\"\r\nX-Pad: "
                + b"p" * (20 << 10) + b"\r\n\r\n" + data + b"\r\n--abc--\r\n")
        r = c.post(SPINDLE_PUSH, content=body, headers={"Content-Type": "multipart/form-data; boundary=abc"})
        assert r.status_code == 431 and "headers" in r.json()["error"], r.text
        # the documented tenant/product reference, raw or with %2F
        for ref in ("bavaria-spindle/spindle-telemetry", "bavaria-spindle%2Fspindle-telemetry"):
            r = c.get(f"/v1/provider/contracts/{ref}")
            assert r.status_code == 200 and r.json()["id"] == SPINDLE, (ref, r.text)
        r = c.post("/v1/provider/contracts/bavaria-spindle/spindle-telemetry/deliveries",
                   files=[("file", ("t.csv", sample_file(SPINDLE, tmp_path, 40, 78).read_bytes(), "text/csv"))])
        assert r.status_code == 201, r.text
        assert c.get("/v1/provider/contracts/lyon-presses/press-line").status_code == 404  # another firm's
        # last_used_at is written when a token is used
        tid = lab.tokens["firm-a"].split("_")[1]
        info = next(t for t in admin.get("/v1/admin/tokens").json() if t["id"] == tid)
        assert info["last_used_at"], info
        # disable and enable a principal: over HTTP and with the CLI
        r = admin.post("/v1/admin/principals/firm-a/disable")
        assert r.status_code == 200 and r.json()["disabled"] is True
        r = c.get("/v1/whoami")
        assert r.status_code == 401 and "disabled" in r.json()["error"]
        assert admin.post("/v1/admin/principals/firm-a/enable").json()["disabled"] is False
        assert c.get("/v1/whoami").status_code == 200
        assert admin.post("/v1/admin/principals/nobody/disable").status_code == 404
    from typer.testing import CliRunner

    from datalab.cli.commands import app

    with use_lab(lab.home, lab.contracts):
        out = CliRunner().invoke(app, ["principal", "disable", "firm-b"])
        assert out.exit_code == 0 and "disabled" in out.output, out.output
        with lab.as_("firm-b") as c:
            assert c.get("/v1/whoami").status_code == 401
        assert CliRunner().invoke(app, ["principal", "enable", "firm-b"]).exit_code == 0
        with lab.as_("firm-b") as c:
            assert c.get("/v1/whoami").status_code == 200


def test_a_token_in_a_query_string_is_not_logged(lab: Lab) -> None:
    """Item 7: the request line, query included, went to the access log at --log-level info."""
    lab.server.stop()
    lab.server.args = ["--log-level", "info"]
    lab.server.start()
    try:
        token = lab.tokens["firm-a"]
        secret = token.split("_", 2)[2]
        with lab.server.client() as c:
            r = c.get("/v1/whoami", params={"token": token, "access_token": "plain-secret-value"})
            assert r.status_code == 401
    finally:
        lab.server.stop()
        lab.server.args = []
        lab.server.start()
    log = lab.server.log.read_text()
    assert "/v1/whoami?" in log, log[-2000:]
    assert secret not in log and "plain-secret-value" not in log
    assert "?token=[redacted]&access_token=[redacted]" in log


def test_spreadsheet_formulas_are_neutralised_in_csv_and_escaped_in_cards(tmp_path: Path) -> None:
    """Item 7: "=cmd|' /C calc'!A0" was accepted as a machine id and written as it came."""
    import polars as pl

    from datalab.store import datasheet
    from datalab.timeseries import sample

    evil = "=cmd|' /C calc'!A0"
    frame = pl.DataFrame({"machine_id": [evil, "@SUM(A1)", "BSW-M01"], "value": [-1.5, 2.0, 3.0],
                          "note": ["-3.5", "+x", "<script>alert(1)</script>"]})
    for suffix in ("csv", "tsv", "csv.gz"):
        p = sample.write(frame, tmp_path / f"x.{suffix}")
        back = pl.read_csv(p, separator="\t" if suffix == "tsv" else ",")
        assert back["machine_id"].to_list() == ["'" + evil, "'@SUM(A1)", "BSW-M01"]
        assert back["note"].to_list()[:2] == ["-3.5", "'+x"] and back["value"].to_list()[0] == -1.5
    assert pl.read_parquet(sample.write(frame, tmp_path / "x.parquet"))["machine_id"][0] == evil
    page = datasheet.render_html(f"# Card\n\n| machine | note |\n|---|---|\n| {evil} | <script>alert(1)</script> |\n"
                                 f"- entity {evil}", "t<script>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "=cmd" in page and "&#x27; /C calc&#x27;!A0" in page
