"""A long-lived lab process loads what deliveries need once, as it starts (datalab.warm, ``datalab serve``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT


def test_a_warmed_process_has_the_delivery_and_publish_path_loaded(tmp_path: Path) -> None:
    """In a fresh interpreter: the kinds, pyiceberg with its Arrow IO, pyplot and the contracts' lint cache."""
    code = ("import json, sys; from datalab.warm import warm_process; t = warm_process(); "
            "print(json.dumps({'t': t, 'mods': [m for m in ('datalab.timeseries.curate', 'datalab.intake.landing', "
            "'pyiceberg.catalog.sql', 'pyiceberg.io.pyarrow', 'matplotlib.pyplot') if m in sys.modules]}))")
    env = {"PATH": "/usr/bin:/bin", "DATALAB_HOME": str(tmp_path / "lab"), "DATALAB_CONTRACTS": str(ROOT / "data_contracts")}
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["t"] > 0 and len(out["mods"]) == 5, out
    assert list((tmp_path / "lab" / "cache" / "lint").glob("*.json"))  # linted once, remembered for the pushes
    # without the publish stack: a process that only takes deliveries
    code2 = code.replace("warm_process()", "warm_process(publishes=False)")
    p = subprocess.run([sys.executable, "-c", code2], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["mods"] == ["datalab.timeseries.curate", "datalab.intake.landing"]


def test_a_broken_contract_does_not_stop_the_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from datalab import warm

    spec = tmp_path / "contracts"
    shutil.copytree(ROOT / "data_contracts", spec)
    next(spec.rglob("providers/*/*.yaml")).write_text("apiVersion: [unclosed\n")
    monkeypatch.setenv("DATALAB_HOME", str(tmp_path / "lab"))
    monkeypatch.setenv("DATALAB_CONTRACTS", str(spec))
    assert warm.warm_process(publishes=False) > 0


@pytest.mark.parametrize("served", [True, False])
def test_the_service_warms_as_it_starts_only_when_served(lab: Path, monkeypatch: pytest.MonkeyPatch, served: bool) -> None:
    """``datalab serve`` runs create_served_app (each worker warms as it starts); an app built for a test does not."""
    from datalab import warm
    from datalab.service import app as app_mod

    started: list[bool] = []
    monkeypatch.setattr(warm, "warm_in_background", lambda publishes=True: started.append(publishes))
    with TestClient(app_mod.create_served_app() if served else app_mod.create_app()) as client:
        assert client.get("/healthz").status_code == 200
    assert started == ([True] if served else [])
    assert "create_served_app" in (ROOT / "datalab" / "cli" / "service.py").read_text()
