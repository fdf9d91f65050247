"""Shared fixtures: a whole lab in a temp directory, and the real data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The lab-service harness's fixtures (one template lab and one served lab per session).
pytest_plugins = ["tests.service_harness"]

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
    from datalab import contract

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
