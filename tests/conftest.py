"""Shared fixtures: a whole lab in a temp directory, and the real data files."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

# The lab-service harness's fixtures (one template lab and one served lab per session).
pytest_plugins = ["tests.service_harness", "tests.federation_harness"]

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("DATALAB_REALDATA", ROOT.parent / "shared" / "realdata"))


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``DATALAB_HOME`` using the repository's contracts."""
    home = tmp_path / "lab"
    monkeypatch.setenv("DATALAB_HOME", str(home))
    monkeypatch.setenv("DATALAB_CONTRACTS", str(ROOT / "data_contracts"))
    monkeypatch.setenv("DATALAB_ENGINE", "cpu")
    monkeypatch.delenv("DATALAB_SITE", raising=False)
    monkeypatch.delenv("DATALAB_CATALOG_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def contracts():
    from datalab.contracts import contract

    return contract.load_all(ROOT / "data_contracts")


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real data not found at {REALDATA} (set DATALAB_REALDATA)")
    return REALDATA


SPINDLE = "urn:datalab:bavaria-spindle:spindle-telemetry"
PRESS = "urn:datalab:lyon-presses:press-line"
PUMPS = "urn:datalab:oulu-pumps:pump-telemetry"
CMAPSS = "urn:datalab:open-benchmarks:cmapss-fd001"
HYDRAULIC = "urn:datalab:open-benchmarks:hydraulic-rig"


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards; skips the test without a server.

    The server is the one ``DATALAB_TEST_PG_URL`` names (``scripts/test.sh``
    sets it when 127.0.0.1:5432 answers); CI without PostgreSQL skips.
    """
    import sqlalchemy as sa

    from datalab.store import catalog as cat

    pg = os.environ.get("DATALAB_TEST_PG_URL")
    if not pg:
        pytest.skip("no PostgreSQL server: set DATALAB_TEST_PG_URL (scripts/test.sh does when 127.0.0.1:5432 answers)")
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        eng = cat._ENGINES.pop(url, None)
        if eng is not None:
            eng.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def s3_server(bucket: str = "lab-bucket") -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port with ``bucket`` created; the AWS variables that reach it.

    Skips the test where ``moto[server]`` (the cluster extra) is missing. The
    server runs in its own process and is stopped by its pid.
    """
    import signal
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("moto.server", reason="moto[server] (the cluster extra) is not installed")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield env
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
