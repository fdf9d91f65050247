"""The real lab service for tests: ``datalab serve`` in a subprocess on a free loopback port.

``published_template`` builds, once per test session, a lab in which one
spindle delivery went through the Dagster pipelines (ingest, curate,
validate) and one press delivery is landed but pending; each test module
copies it (every path the lab stores is relative to ``DATALAB_HOME``) and
publishes in its copy through the admin endpoint, so the slow pipeline run
happens once. The copied contracts give ``lyon-presses`` a 256 KiB file
limit, so oversized uploads are cheap to test.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import PRESS, ROOT, SPINDLE

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
PRESS_LIMIT = 256 << 10
ENV_KEYS = ("DATALAB_HOME", "DATALAB_CONTRACTS", "DATALAB_ENGINE", "DATALAB_SITE", "DATALAB_CATALOG_URL",
            "DATALAB_URL", "DATALAB_TOKEN", "DAGSTER_HOME")


# Ports handed out by free_port in this process. The kernel may give the same free port to two
# binds in a row once the first socket is closed: two federation sites, given their ports before
# either started, once got the same one, and the second's health check was answered by the first.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, and never handed out before by this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def lab_env(home: Path, contracts: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(DATALAB_HOME=str(home), DATALAB_CONTRACTS=str(contracts), DATALAB_ENGINE="cpu",
               PYTHONPATH=str(ROOT))
    # The tests send hundreds of deliberately bad tokens from one address; the limit has its own test.
    env.setdefault("DATALAB_RATE_ADDRESS_PER_MIN", "100000")
    return env


class use_lab:
    """Point this process's DATALAB_* at a lab for the duration of a block (restored after)."""

    def __init__(self, home: Path, contracts: Path):
        self.env = lab_env(home, contracts)

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in ENV_KEYS}
        for k in ENV_KEYS:
            os.environ.pop(k, None)
        for k in ("DATALAB_HOME", "DATALAB_CONTRACTS", "DATALAB_ENGINE"):
            os.environ[k] = self.env[k]

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def copy_contracts(dst: Path) -> Path:
    shutil.copytree(ROOT / "data_contracts", dst)
    press = dst / "providers" / "lyon-presses" / "press-line.yaml"
    text = press.read_text()
    assert "\ncustomProperties:\n" in text
    press.write_text(text.replace("\ncustomProperties:\n",
                                  f"\ncustomProperties:\n  - property: limits\n    value: {{max_file_bytes: {PRESS_LIMIT}}}\n", 1))
    return dst


@dataclass
class Server:
    """One ``datalab serve`` process; ``kill()`` is a real SIGKILL."""

    home: Path
    contracts: Path
    workers: int = 1
    port: int = 0
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of lab_env (e.g. rate limits)
    args: list[str] = field(default_factory=list)  # more `datalab serve` options (e.g. --log-level info)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home.parent / f"server-{self.home.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        cmd = [sys.executable, "-m", "datalab.cli.commands", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(self.workers), *self.args]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, env={**lab_env(self.home, self.contracts), **self.env}, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=str(self.home.parent),
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (uvicorn workers included): no cleanup runs."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str | None = None, **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kw)


@dataclass
class Lab:
    """A served lab with one token per kind of caller."""

    home: Path
    contracts: Path
    server: Server
    tokens: dict[str, str]

    def as_(self, who: str) -> httpx.Client:
        return self.server.client(self.tokens[who])


PRINCIPALS = {
    # name: (kind, tenant, site, roles)
    "firm-a": ("firm", "bavaria-spindle", None, None),
    "firm-a-ro": ("firm", "bavaria-spindle", None, ["receipts"]),
    "firm-b": ("firm", "lyon-presses", None, None),
    "team-de": ("consumer", None, "munich", None),
    "team-fi": ("consumer", None, "kajaani", None),
    "admin": ("admin", None, None, None),
}


def add_principals(home: Path, contracts: Path) -> dict[str, str]:
    from datalab.policy import auth

    with use_lab(home, contracts):
        out = {}
        for name, (kind, tenant, site, roles) in PRINCIPALS.items():
            auth.add_principal(name, kind, tenant, site, roles, actor="test")
            out[name] = auth.create_token(name, 7, "tests", actor="test")[0]
        return out


def sample_file(contract_id: str, tmp: Path, rows: int = 400, seed: int = 1, name: str | None = None) -> Path:
    from datalab.contracts import contract as contracts_mod
    from datalab.timeseries import sample

    c = contracts_mod.load_all(ROOT / "data_contracts")[contract_id]
    p = tmp / (name or f"{c.product}-{seed}.csv")
    # Each seed on a day of its own: two samples are different readings, not
    # repeats of the same keys (which the lab excludes since issue 23).
    return sample.write(sample.generate(c, rows, seed=seed, start=START + dt.timedelta(days=seed),
                                        defects=sample.Defects.none()), p)


@pytest.fixture(scope="session")
def published_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(home, contracts) of a lab with one validated spindle delivery and one pending press delivery."""
    base = tmp_path_factory.mktemp("svc-template")
    contracts = copy_contracts(base / "contracts")
    home = base / "lab"
    with use_lab(home, contracts):
        from datalab.contracts import contract as contracts_mod
        from datalab.intake import landing
        from pipelines import runner

        cs = contracts_mod.load_all(contracts)
        assert landing.push(cs[SPINDLE], [sample_file(SPINDLE, base, 600, 1)], actor="firm:seed").accepted
        runs = runner.run_pending(SPINDLE)
        assert [r.validation_ok for r in runs] == [True], runs
        assert landing.push(cs[PRESS], [sample_file(PRESS, base, 300, 2)], actor="firm:seed").accepted
    return home, contracts


def lab_from_template(template: tuple[Path, Path], dst: Path, workers: int = 1) -> Lab:
    """A copy of the template lab, with principals and tokens, served."""
    home = dst / "lab"
    shutil.copytree(template[0], home)
    tokens = add_principals(home, template[1])
    server = Server(home, template[1], workers=workers).start()
    return Lab(home, template[1], server, tokens)


@contextlib.contextmanager
def served_copy(template: tuple[Path, Path], dst: Path) -> Iterator[Lab]:
    """``lab_from_template`` whose server is stopped however the block ends."""
    lab = lab_from_template(template, dst)
    try:
        yield lab
    finally:
        lab.server.stop()


@pytest.fixture(scope="session")
def served_lab(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A served copy of the template in which plant-telemetry 1.0.0 is published over HTTP.

    Shared by the API, matrix and load tests (one server start and one publish instead of three);
    they only add deliveries and versions, so none depends on another's absence.
    """
    with served_copy(published_template, tmp_path_factory.mktemp("svc")) as lab:
        with lab.as_("admin") as c:
            r = c.post("/v1/admin/datasets/plant-telemetry/publish", timeout=300)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == "1.0.0"
        yield lab
