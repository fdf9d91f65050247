"""First contact (issue 20): the README's commands work as written, and every mistake is one line.

The README is read, not copied: the commands of its "Then:" block are taken
from it and run in order, with ``.venv/bin`` off ``PATH`` as in a fresh
shell, on a fresh ``DATALAB_HOME`` filled by a small demo (``datalab demo``,
as ``scripts/demo.sh`` runs it, with fewer rows and without the real files).
``datalab ui`` is started in the background, must answer on its port, and
must stop on SIGTERM. Then docs/service.md's quick start runs against a real
``datalab serve``; then every command of the CLI table gets a typical wrong
input, and each must exit with its kind's code, in one line, without a
traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import REALDATA, ROOT
from tests.service_harness import free_port, lab_env

DATALAB = ".venv/bin/datalab"  # as the README writes it, run from the repository root
TRACEBACK = "Traceback (most recent call last)"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = lab_env(home, ROOT / "data_contracts")
    env["PATH"] = "/usr/bin:/bin"  # a fresh shell: .venv/bin is not on PATH
    env["COLUMNS"] = "80"
    env.pop("DATALAB_DEBUG", None)
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _readme_commands() -> list[list[str]]:
    """The commands of the README's block after the demo, in order, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Then:\n\n```bash\n(.*?)```", text, re.S)
    assert block, "README: the block of commands after the demo is gone"
    cmds = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(DATALAB):
            cmds.append(line.split())
    assert [c[1] for c in cmds] == ["ui", "list", "show", "audit"], cmds
    return cmds


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("first-contact") / ".datalab"
    r = _run([DATALAB, "demo", "--reset", "--rows", "1500", "--no-real"], _env(home), timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the summary's next commands are the ones that work from here (.venv/bin is not on PATH), each whole
    # on its line at 80 columns, so they can be copied
    lines = r.stdout.splitlines()
    assert f"  export DATALAB_HOME={home}" in lines and f"  {DATALAB} audit verify" in lines, r.stdout[-2000:]
    assert any(ln.startswith(f"  {DATALAB} ui ") for ln in lines), r.stdout[-2000:]
    assert "…" not in r.stdout.split("summary")[-1], "the summary cuts a path"
    assert "rows delivered" in r.stdout and "readings" in r.stdout
    return home


def test_readme_commands_in_order(demo_home: Path) -> None:
    env = _env(demo_home)
    for cmd in _readme_commands():
        if cmd[1] == "ui":
            _ui_answers_and_stops_on_sigterm(cmd, env)
            continue
        r = _run(cmd, env)
        assert r.returncode == 0 and TRACEBACK not in r.stdout + r.stderr, (cmd, r.stdout[-2000:], r.stderr[-2000:])
        if cmd[1] == "show":
            assert r.stdout.startswith("# Plant telemetry")
            # the card's tables are printed whole: no row of a Markdown table is wrapped
            assert all(ln.endswith("|") for ln in r.stdout.splitlines() if ln.startswith("|"))
        if cmd[1] == "list":
            assert "plant-telemetry" in r.stdout and "1.0.1" in r.stdout


def _ui_answers_and_stops_on_sigterm(cmd: list[str], env: dict[str, str]) -> None:
    port = free_port()
    # in the background as a service manager or nohup starts it: its own session, SIGINT ignored
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"datalab ui exited with {proc.returncode}: {proc.stdout.read()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Dagster UI did not answer within 120 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=45)
        log = proc.stdout.read()
        assert rc == 0 and TRACEBACK not in log, log[-3000:]
        with pytest.raises(httpx.TransportError):  # nothing of the UI is left answering
            httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_service_quick_start(demo_home: Path, tmp_path: Path) -> None:
    """docs/service.md's quick start, step by step, against a real server on the demo lab."""
    doc = (ROOT / "docs" / "service.md").read_text()
    assert doc.index("## Quick start") < doc.index("## Principals"), "the quick start comes first"
    env = _env(demo_home)
    port = free_port()
    server = subprocess.Popen([DATALAB, "serve", "--port", str(port)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        for args in (["principal", "add", "firm-a", "--kind", "firm", "--tenant", "bavaria-spindle"],
                     ["principal", "add", "team-de", "--kind", "consumer", "--site", "munich"]):
            r = _run([DATALAB, *args], env)
            assert r.returncode == 0, r.stderr
        tokens = {}
        for who in ("firm-a", "team-de"):
            r = _run([DATALAB, "token", "create", who, "--days", "30"], env)
            assert r.returncode == 0, r.stderr
            tokens[who] = r.stdout.strip()
        client = tmp_path / "client"  # a client machine: no lab of its own
        firm = _env(client, DATALAB_URL=url, DATALAB_TOKEN=tokens["firm-a"])
        team = _env(client, DATALAB_URL=url, DATALAB_TOKEN=tokens["team-de"])
        r = _run([DATALAB, "sample", "bavaria-spindle/spindle-telemetry", "--rows", "300", "--out", str(tmp_path / "s")], firm)
        assert r.returncode == 0, r.stderr
        r = _run([DATALAB, "push", "bavaria-spindle/spindle-telemetry", *r.stdout.split()], firm)
        assert r.returncode in (0, 1) and "rows delivered" in r.stdout, r.stdout + r.stderr
        r = _run([DATALAB, "receipts", "--json"], firm)
        assert r.returncode == 0 and json.loads(r.stdout), r.stderr
        r = _run([DATALAB, "list", "--purpose", "predictive-maintenance"], team)
        assert r.returncode == 0 and "plant-telemetry" in r.stdout, r.stderr
        # show over HTTP: the card for the purpose (it used to read the client's own, empty, lab)
        r = _run([DATALAB, "show", "plant-telemetry@1.0.1", "--purpose", "predictive-maintenance"], team)
        assert r.returncode == 0 and r.stdout.startswith("# Plant telemetry"), r.stdout[-500:] + r.stderr
        card = r.stdout
        r = _run([DATALAB, "show", "plant-telemetry@1.0.1", "--purpose", "predictive-maintenance", "--json"], team)
        assert r.returncode == 0, r.stderr
        manifest = r.stdout
        # the firm-name rule: the confidential spindle firm is its pseudonym wherever the consumer reads
        for text in (card, manifest):
            assert "bavaria" not in text and "BSW-M0" not in text and "LicenseRef-BSW" not in text
        r = _run([DATALAB, "pull", "plant-telemetry@1.0.1", "--purpose", "predictive-maintenance",
                  "--to", str(tmp_path / "got")], team)
        assert r.returncode == 0 and "checksums verified" in r.stdout, r.stderr
        assert "bavaria" not in (tmp_path / "got" / "plant-telemetry-1.0.1" / "manifest.json").read_text()
        # over HTTP, a missing --purpose is a usage error; local-only commands say so
        r = _run([DATALAB, "show", "plant-telemetry@1.0.1"], team)
        assert r.returncode == 2 and "--purpose" in r.stderr and TRACEBACK not in r.stderr
        r = _run([DATALAB, "policy", "explain", "plant-telemetry@1.0.1"], {**team, "DATALAB_HOME": str(demo_home)})
        assert r.returncode == 0 and "local-only" in r.stderr, r.stderr
        r = _run([DATALAB, "audit", "verify"], team)  # a consumer token may not read the audit log
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and TRACEBACK not in r.stderr, r.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def _bad_contract(tmp: Path) -> Path:
    src = (ROOT / "data_contracts" / "providers" / "bavaria-spindle" / "spindle-telemetry.yaml").read_text()
    p = tmp / "bad.yaml"
    p.write_text(src.replace("version: 1.0.0", "version: 1.0", 1).replace("status: active", "status: bogus", 1))
    return p


def test_every_command_with_a_typical_mistake(demo_home: Path, tmp_path: Path) -> None:
    """Each: the exit code of its kind, no traceback, and one ``error:`` line that says what to do."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    dead = {"DATALAB_URL": f"http://127.0.0.1:{free_port()}", "DATALAB_TOKEN": "dl_x_y"}
    nolab = {"DATALAB_HOME": str(tmp_path / "typo-lab")}
    dxf = REALDATA / "cad" / "dxf" / "broken_loop.dxf"
    pt = "plant-telemetry@1.0.1"
    cases: list[tuple[list[str], dict[str, str], int, str]] = [
        (["pull", pt, "--purpose", "predictive-maintenance", "--to", str(a_file)], {}, 4, "give a directory"),
        (["pull", pt, "--purpose", "predictive-maintenance", "--to", "/proc/nope"], {}, 4, "/proc/nope"),
        (["pull", pt, "--purpose", "model-training", "--to", str(tmp_path)], {}, 1, "prohibited_purposes"),
        (["pull", pt, "--purpose", "predictive-maintenance", "--to", str(tmp_path)], dead, 5, "cannot reach"),
        (["list"], dead, 2, "needs --purpose"),
        (["list", "--purpose", "research"], dead, 5, "cannot reach"),
        (["receipts"], dead, 5, "cannot reach"),
        (["push", "bavaria-spindle/spindle-telemetry", str(a_file)], dead, 5, "cannot reach"),
        (["show", pt, "--purpose", "research"], dead, 5, "cannot reach"),
        (["audit", "show"], dead, 5, "cannot reach"),
        (["list"], nolab, 3, "no lab at"),
        (["show", pt], nolab, 3, "no lab at"),
        (["receipts"], nolab, 3, "no lab at"),
        (["audit", "verify"], nolab, 3, "no lab at"),
        (["audit", "show"], nolab, 3, "no lab at"),
        (["policy", "explain", pt], nolab, 3, "no lab at"),
        (["principal", "list"], nolab, 3, "no lab at"),
        (["token", "list"], nolab, 3, "no lab at"),
        (["show", "nope"], {}, 3, "nope"),
        (["show", pt, "--purpose", "model-training"], {}, 1, "prohibited_purposes"),
        (["policy", "explain", "plant-telemetry@9.9.9"], {}, 3, "9.9.9"),
        (["diff", "plant-telemetry@1.0.0", "hydraulic-rig@1.0.0"], {}, 2, "two versions of one dataset"),
        (["replicate", "virginia", "plant-telemetry@9.9.9", "--purpose", "research"], {}, 3, "no peer 'virginia'"),
        (["replicate", "virginia", pt, "--purpose", "research"], {}, 1, "a replica never replaces a version"),
        (["contract", "lint", str(_bad_contract(tmp_path))], {}, 2, "version: must be a semantic version"),
        (["contract", "withdraw", "nope/nothing", "--reason", "x"], {}, 3, "nope"),
        (["sample", "nope/nothing"], {}, 3, "nope"),
        (["push", "bavaria-spindle/spindle-telemetry", str(tmp_path / "missing.csv")], {}, 4, "missing.csv"),
        (["publish", "nope"], {}, 3, "no dataset 'nope'"),
        (["retention", "enforce", "--today", "soon"], {}, 2, "soon"),
        (["principal", "add", "x", "--kind", "wizard"], {}, 1, "wizard"),
        (["token", "create", "nobody"], {}, 3, "nobody"),
        (["token", "revoke", "nope"], {}, 3, "nope"),
        (["audit", "export", "--to", "/proc/nope/audit.jsonl"], {}, 4, "/proc/nope"),
        (["contract", "draft", str(tmp_path / "missing.mat"), "--tenant", "acme"], {}, 4, "missing.mat"),
        (["stream", "nope/nothing", "--mqtt", "mqtt://127.0.0.1:1", "--topic", "t"], {}, 3, "nope"),
        (["cad", "inspect", str(dxf), "--contract", "lyon-presses/tooling-cad"], {}, 1, "would be rejected"),
        (["cad", "inspect", str(dxf), "--contract", "lyon-presses/press-line"], {}, 2, "not a CAD contract"),
        (["cad", "inspect", str(tmp_path / "missing.stp")], {}, 2, "does not exist"),
        (["frobnicate"], {}, 2, "No such command"),
    ]
    if not dxf.exists():  # the CAD cases need ../shared/realdata (DATALAB_REALDATA); the others run without it
        cases = [c for c in cases if str(dxf) not in c[0]]

    def one(case: tuple[list[str], dict[str, str], int, str]) -> tuple[list[str], int, str, str, str, int]:
        args, extra, code, text = case
        r = _run([DATALAB, *args], _env(demo_home, **extra))
        return args, code, text, r.stdout, r.stderr, r.returncode

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, cases))
    bad = []
    for args, code, text, stdout, stderr, rc in results:
        both = stdout + stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith(("error:", "internal error:"))]
        if rc != code or TRACEBACK in both or text not in " ".join(both.split()) or len(errors) > 1 \
                or "[bold red]" in both or "internal error" in both:
            bad.append(f"datalab {' '.join(args)}: exit {rc} (want {code}, {text!r})\n{both[-1500:]}")
    assert not bad, "\n\n".join(bad)
    assert not (tmp_path / "typo-lab").exists(), "a read command created the mistyped lab"
    # the one-line form: "what failed — what to do"
    r = _run([DATALAB, "list", "--purpose", "research"], _env(demo_home, **dead))
    assert r.stderr.count("\n") == 1 and " — " in r.stderr and "DATALAB_URL" in r.stderr
    # --debug (or DATALAB_DEBUG=1) is how to get the traceback
    r = _run([DATALAB, "--debug", "show", "nope"], _env(demo_home))
    assert r.returncode == 3 and TRACEBACK in r.stderr


def test_ids_are_never_cut(demo_home: Path) -> None:
    """At 80 columns every contract id, delivery id and audit subject is printed whole; --json everywhere."""
    env = _env(demo_home)
    ids = json.loads(_run([DATALAB, "contract", "list", "--json"], env).stdout)
    r = _run([DATALAB, "contract", "list"], env)
    assert all(c["id"] in r.stdout for c in ids) and "…" not in r.stdout
    recs = json.loads(_run([DATALAB, "receipts", "--json"], env).stdout)
    r = _run([DATALAB, "receipts"], env)
    assert recs and all(x["delivery_id"] in r.stdout for x in recs) and "…" not in r.stdout
    entries = json.loads(_run([DATALAB, "audit", "show", "--json"], env).stdout)
    r = _run([DATALAB, "audit", "show"], env)
    assert all(e["subject"] in r.stdout and e["actor"] in r.stdout for e in entries) and "…" not in r.stdout
    for cmd in (["list", "--json"], ["principal", "list", "--json"], ["token", "list", "--json"],
                ["policy", "purposes", "--json"]):
        r = _run([DATALAB, *cmd], env)
        assert r.returncode == 0, (cmd, r.stderr)
        json.loads(r.stdout)


def test_dagster_card_images_and_version_check(demo_home: Path, tmp_path: Path) -> None:
    """The card in the Dagster UI carries its plots inline; the asset check catches a changed file."""
    import shutil

    from datalab.store.publish import read_manifest
    from datalab.store.version_check import card_with_inline_images, verify
    from tests.service_harness import use_lab

    home = tmp_path / ".datalab"
    shutil.copytree(demo_home, home)  # every stored path is relative to DATALAB_HOME
    with use_lab(home, ROOT / "data_contracts"):
        m = read_manifest("plant-telemetry", "1.0.1")
        card = card_with_inline_images("plant-telemetry", m)
        assert card is not None and card.count("](data:image/png;base64,") == 3
        assert not re.search(r"!\[[^\]]*\]\((?!data:)", card), "a relative image link is left"
        assert verify("plant-telemetry", "1.0.1") == ([], {"version": "1.0.1", "files_checked": len(m.files),
                                                           "rows": m.rows, "rows_in_files": m.rows,
                                                           "rows_per_contract_total": m.rows})
        f = home / m.files[0].path
        f.chmod(0o644)
        f.write_bytes(f.read_bytes() + b"x")
        problems, _ = verify("plant-telemetry", "1.0.1")
        assert len(problems) == 2 and all(m.files[0].path in p for p in problems), problems
    # the Dagster asset check version_verifies runs on every materialisation of the dataset asset
    r = _run([DATALAB, "publish", "plant-telemetry"], _env(home))
    assert r.returncode == 1 and "asset check version_verifies failed" in r.stderr, r.stdout + r.stderr
    assert "Stack Trace" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
