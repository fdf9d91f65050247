"""Three lab sites as three ``datalab serve`` processes on loopback, each with its own home.

munich publishes plant-telemetry (confidential, residency DE); stuttgart
(DE, cap restricted, added to the test's sites.yaml) and kajaani (FI) start
empty. Every site knows the others as registered peers. garching-open (DE,
cap public) is an identity only (keys and a home, no process), registered at
munich, for what a public-only site may see. Processes are started and stopped by
pid (their own session), never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.service_harness import ENV_KEYS, free_port, lab_env

SITES = ("munich", "stuttgart", "kajaani")
EXTRA_SITE = "  - {name: stuttgart, country: DE, region: EU, operator: test site in DE, max_classification: restricted}\n"


@dataclass
class Site:
    name: str
    home: Path
    contracts: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home.parent / f"site-{self.name}.log"
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = lab_env(self.home, self.contracts)
        env.update(DATALAB_SITE=self.name, DATALAB_SITE_URL=self.url, DATALAB_DSP_VALIDATE="1",
                   DATALAB_OUTBOX_INTERVAL="0.3", DATALAB_OUTBOX_MAX_BACKOFF="1", **self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> Site:
        cmd = [sys.executable, "-m", "datalab.cli.commands", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=logf, stderr=subprocess.STDOUT,
                                         cwd=str(self.home.parent), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"site {self.name} exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"site {self.name} did not come up:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    @contextlib.contextmanager
    def here(self) -> Iterator[None]:
        """Run in-process code as this site (DATALAB_* env), restored after."""
        keys = (*ENV_KEYS, "DATALAB_SITE_URL", "DATALAB_DSP_VALIDATE")
        saved = {k: os.environ.get(k) for k in keys}
        for k in keys:
            os.environ.pop(k, None)
        env = self.env()
        for k in ("DATALAB_HOME", "DATALAB_CONTRACTS", "DATALAB_ENGINE", "DATALAB_SITE", "DATALAB_SITE_URL",
                  "DATALAB_DSP_VALIDATE"):
            os.environ[k] = env[k]
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def build(published_template: tuple[Path, Path], base: Path,
          names: tuple[str, ...] = (*SITES, "garching-open")) -> dict[str, Site]:
    """Sites ``names`` under ``base``, not started: munich publishes plant-telemetry 1.0.0, all are peers.

    garching-open, when named, is an identity only: keys and peers, never served.
    """
    from datalab.federation import identity
    from datalab.store.publish import publish

    contracts = base / "contracts"
    shutil.copytree(published_template[1], contracts)
    with open(contracts / "sites.yaml", "a") as f:
        f.write(EXTRA_SITE)
    sites = {n: Site(n, base / n, contracts) for n in names}
    shutil.copytree(published_template[0], sites["munich"].home)
    for s in sites.values():
        s.home.mkdir(parents=True, exist_ok=True)
    with sites["munich"].here():
        assert publish("plant-telemetry", actor="test").version == "1.0.0"
    keys = {}
    for s in sites.values():
        with s.here():
            keys[s.name] = identity.public_key_b64()
    for s in sites.values():
        with s.here():
            for o in sites.values():
                if o.name != s.name and (s.name == "munich" or o.name != "garching-open"):
                    identity.add_peer(o.name, o.url, keys[o.name])
    if "garching-open" in sites:
        with sites["garching-open"].here():
            identity.add_peer("munich", sites["munich"].url, keys["munich"])
    return sites


@pytest.fixture(scope="session")
def federation(published_template: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    """munich (plant-telemetry 1.0.0 published), kajaani, garching-open: served, peers of each other."""
    sites = build(published_template, tmp_path_factory.mktemp("federation"))
    try:
        for n in SITES:
            sites[n].start()
        yield sites
    finally:
        for s in sites.values():
            s.stop()
