"""Settings in one place: every ``DATALAB_*`` variable is read and checked in ``datalab/config.py``.

The README's settings table, the variables ``config.py`` knows and every
``DATALAB_*`` name in the lab's source (core and Dagster layer) must be the
same set, so a new variable without documentation fails here; no other module
reads one from the environment; a bad value is refused with the variable's
name and the rule.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from datalab import config
from datalab.config import Settings, settings

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("datalab", "assets", "checks", "pipelines")
NAME = re.compile(r"DATALAB_[A-Z][A-Z0-9_]*[A-Z0-9]")


def _readme_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `DATALAB_"):
            names |= set(NAME.findall(line.split("|")[1]))
    return names


def _source_files() -> list[Path]:
    return sorted(p for pkg in SOURCES for p in (ROOT / pkg).rglob("*.py"))


def test_readme_table_lists_exactly_the_variables_config_knows() -> None:
    readme = _readme_variables()
    known = set(config.VARIABLES) | set(config.SCRIPT_VARIABLES)
    assert len(config.VARIABLES) == len(set(config.VARIABLES))
    assert not readme - known, f"in the README but unknown to datalab/config.py: {sorted(readme - known)}"
    assert not known - readme, f"known to datalab/config.py but not in the README's settings table: {sorted(known - readme)}"


def test_every_variable_named_in_the_source_is_known_to_config() -> None:
    known = set(config.VARIABLES) | set(config.SCRIPT_VARIABLES)
    named: dict[str, list[str]] = {}
    for p in _source_files():
        for n in NAME.findall(p.read_text()):
            named.setdefault(n, []).append(str(p.relative_to(ROOT)))
    unknown = {n: sorted(set(where)) for n, where in named.items() if n not in known}
    assert not unknown, f"DATALAB_* names in the source that config.py and the README do not know: {unknown}"
    # config.py reads every variable it lists (not a list that drifts from the code)
    cfg = (ROOT / "datalab" / "config.py").read_text().split("SCRIPT_VARIABLES = ", 1)[1]
    unread = [v for v in config.VARIABLES if f'"{v}"' not in cfg]
    assert not unread, f"listed in config.VARIABLES but never read there: {unread}"


def _env_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``os.environ.get("DATALAB_X")``, ``os.environ["DATALAB_X"]`` (read), ``"DATALAB_X" in os.environ``, ``os.getenv``."""
    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    def lab_name(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
            return node.value
        return None

    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if isinstance(f, ast.Attribute) and (f.attr == "getenv" or (f.attr in ("get", "pop") and is_environ(f.value))):
                name = lab_name(node.args[0])
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            name = lab_name(node.slice)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            name = lab_name(node.left)
        if name:
            found.append((node.lineno, name))
    return found


def test_no_module_but_config_reads_a_lab_variable() -> None:
    reads = {}
    for p in _source_files():
        if p == ROOT / "datalab" / "config.py":
            continue
        hits = _env_reads(ast.parse(p.read_text(), str(p)))
        if hits:
            reads[str(p.relative_to(ROOT))] = hits
    assert not reads, f"read these through datalab.config instead: {reads}"
    # the check itself sees the forms it looks for
    sample = ('import os\nos.environ.get("DATALAB_AA")\nos.environ["DATALAB_BB"]\nos.getenv("DATALAB_CC")\n'
              '"DATALAB_DD" in os.environ\nos.environ["DATALAB_EE"] = "1"\n')
    assert [n for _, n in sorted(_env_reads(ast.parse(sample)))] == ["DATALAB_AA", "DATALAB_BB", "DATALAB_CC", "DATALAB_DD"]


def test_settings_are_a_frozen_dataclass_and_hide_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATALAB_HOME", str(tmp_path))
    monkeypatch.setenv("DATALAB_TOKEN", "dl_abc_secret-token")
    monkeypatch.setenv("DATALAB_PSEUDONYM_KEY", "ab" * 32)
    monkeypatch.setenv("DATALAB_AUDIT_KEY", "cd" * 32)
    s = settings()
    assert dataclasses.is_dataclass(s) and isinstance(s, Settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.home = tmp_path / "other"  # type: ignore[misc]
    assert s.token == "dl_abc_secret-token" and s.pseudonym_key == bytes.fromhex("ab" * 32)
    assert s.audit_key == bytes.fromhex("cd" * 32)
    shown = repr(s)
    assert "secret-token" not in shown and "abab" not in shown and "cdcd" not in shown


def test_values_are_read_and_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATALAB_HOME", str(tmp_path))
    for var, value in {"DATALAB_SENSOR_SECONDS": "7", "DATALAB_OUTBOX_INTERVAL": "0", "DATALAB_OUTBOX_MAX_BACKOFF": "12.5",
                       "DATALAB_DSP_RATE_LIMIT": "1_000", "DATALAB_CLEARANCE": " Restricted ",
                       "DATALAB_EXPORT_CLEARED": "yes", "DATALAB_SITE_URL": "http://a.example/", "DATALAB_DSP_VALIDATE": "1",
                       "DATALAB_AUDIT_CHECKPOINTS": str(tmp_path / "cp.jsonl"), "DATALAB_ACTOR": "team:x"}.items():
        monkeypatch.setenv(var, value)
    s = settings()
    assert (s.sensor_seconds, s.outbox_interval, s.outbox_max_backoff, s.dsp_rate_limit) == (7, 0.0, 12.5, 1000)
    assert (s.clearance, s.export_cleared, s.site_url, s.dsp_validate) == ("restricted", True, "http://a.example", True)
    assert s.audit_checkpoints == tmp_path / "cp.jsonl" and s.actor == "team:x"
    for var in ("DATALAB_SENSOR_SECONDS", "DATALAB_OUTBOX_INTERVAL", "DATALAB_OUTBOX_MAX_BACKOFF", "DATALAB_DSP_RATE_LIMIT",
                "DATALAB_CLEARANCE", "DATALAB_EXPORT_CLEARED", "DATALAB_SITE_URL", "DATALAB_DSP_VALIDATE", "DATALAB_ACTOR",
                "DATALAB_AUDIT_CHECKPOINTS"):
        monkeypatch.delenv(var)
    d = settings()
    assert (d.sensor_seconds, d.outbox_interval, d.outbox_max_backoff, d.dsp_rate_limit) == (30, 5.0, 300.0, 0)
    assert (d.clearance, d.export_cleared, d.site_url, d.dsp_validate, d.actor) == ("confidential", False, None, False, None)


@pytest.mark.parametrize(("var", "value", "rule"), [
    ("DATALAB_PROFILE", "bogus", "use local or cluster"),
    ("DATALAB_ENGINE", "tpu", "use auto, cpu or gpu"),
    ("DATALAB_CLEARANCE", "secret", "use public, internal, confidential or restricted"),
    ("DATALAB_SENSOR_SECONDS", "soon", "expected a positive integer"),
    ("DATALAB_SENSOR_SECONDS", "0", "expected a positive integer"),
    ("DATALAB_MAX_RUNS", "-1", "expected a positive integer"),
    ("DATALAB_RATE_TOKEN_PER_MIN", "lots", "expected a non-negative integer (0: off)"),
    ("DATALAB_DSP_RATE_LIMIT", "fast", "expected a non-negative integer (0: off)"),
    ("DATALAB_OUTBOX_INTERVAL", "five", "expected a number of seconds, 0 or more (0: off)"),
    ("DATALAB_OUTBOX_MAX_BACKOFF", "0", "expected a positive number of seconds"),
    ("DATALAB_OUTBOX_MAX_BACKOFF", "nan", "expected a positive number of seconds"),
    ("DATALAB_PSEUDONYM_KEY", "not-hex", "expected hex"),
    ("DATALAB_AUDIT_KEY", "zz", "expected hex"),
    ("DATALAB_STORAGE", "/data/lab", "use s3://bucket/prefix"),
])
def test_a_bad_value_names_the_variable_and_the_rule(monkeypatch: pytest.MonkeyPatch, var: str, value: str, rule: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(config.SettingsError) as e:
        settings()
    assert isinstance(e.value, ValueError)  # callers that caught the bare ValueError still do
    assert str(e.value).startswith(var) and rule in str(e.value)


def test_the_cli_reports_a_bad_value_as_a_usage_error(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DATALAB_")}
    env.update(DATALAB_HOME=str(tmp_path), DATALAB_SENSOR_SECONDS="often", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "datalab.cli.commands", "list"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr  # a usage error, not "a bug in datalab" (70)
    assert "DATALAB_SENSOR_SECONDS='often': expected a positive integer" in r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr


def test_cleared_settings_reach_the_clearance_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clearance comes from the Settings handed in (the CAD demo's cleared team), not from os.environ."""
    from datalab.contracts.policy import Policy
    from datalab.errors import PolicyRefused
    from datalab.policy.clearance import check_clearance

    monkeypatch.delenv("DATALAB_EXPORT_CLEARED", raising=False)
    pol = Policy(residency=("eu",), purposes=("research",), classification="internal", export_control=True)
    with pytest.raises(PolicyRefused):
        check_clearance(pol)
    check_clearance(pol, s=dataclasses.replace(settings(), export_cleared=True))
    assert "DATALAB_EXPORT_CLEARED" not in __import__("os").environ


def test_settings_are_reused_until_a_variable_or_the_directory_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """settings() keeps the last reading per environment: the same object while nothing changes, a new one after."""
    monkeypatch.setenv("DATALAB_HOME", str(tmp_path / "a"))
    first = config.settings()
    assert config.settings() is first
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "1234")
    changed = config.settings()
    assert changed is not first and changed.curate_bucket_rows == 1234
    monkeypatch.setenv("DATALAB_HOME", "rel-home")
    monkeypatch.chdir(tmp_path)
    assert config.settings().home == tmp_path / "rel-home"
    monkeypatch.setenv("DATALAB_CURATE_BUCKET_ROWS", "0")
    with pytest.raises(config.SettingsError):
        config.settings()  # a bad value is refused every time, never cached
    with pytest.raises(config.SettingsError):
        config.settings()
