"""The faces find the pipelines through the ``datalab.runners`` entry point group (datalab/runs.py)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from datalab import runs

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_the_dagster_runner() -> None:
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][runs.GROUP]
    module, _, attr = eps[runs.DEFAULT].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    assert isinstance(obj, runs.Runner)


def test_the_installed_metadata_has_the_runner() -> None:
    """The lab's install knows the group (else ``datalab run`` says it needs the pipelines: reinstall)."""
    r = runs.runner()
    assert type(r).__module__ == "pipelines.runner"


def test_without_a_runner_the_commands_say_so(monkeypatch: pytest.MonkeyPatch, lab: Path) -> None:
    from typer.testing import CliRunner

    from datalab.cli.commands import app
    from datalab.cli.sovereignty import _hook

    monkeypatch.setattr(runs, "entry_points", lambda group: [])
    with pytest.raises(runs.RunnerMissing, match="needs the lab's pipelines"):
        runs.runner()
    assert runs.optional_runner() is None and _hook() is None
    r = CliRunner().invoke(app, ["publish", "plant-telemetry"])
    assert r.exit_code != 0
    assert "needs the lab's pipelines" in r.output + str(r.exception or "")
