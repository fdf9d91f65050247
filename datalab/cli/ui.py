"""``datalab ui``: the Dagster UI as a child process that stops when it is told to.

Two things made ``datalab ui`` fail a new user (issue 20):

* ``dagster`` was looked up on ``PATH``; ``.venv/bin/datalab ui`` runs with
  ``.venv/bin`` off ``PATH``, so the lookup failed. The ``dagster`` that
  belongs to this lab is the one installed beside the running interpreter.
* it replaced itself with ``dagster dev`` (``execvp``). Started in the
  background (``nohup``, ``&``, a service manager, a test) a process inherits
  SIGINT as *ignored*, and ``dagster dev`` then ignored SIGTERM and SIGINT and
  needed SIGKILL. Now ``datalab ui`` stays the parent: it starts ``dagster dev``
  in its own process group with SIGINT restored, and on SIGTERM or SIGINT asks
  it to stop the way Ctrl-C does, then terminates the group if it lingers.

This module does not import Dagster (``datalab/`` never does); it only runs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from datalab.errors import DatalabError

GRACE_S = 20.0  # how long dagster dev may take to stop its webserver and daemon after Ctrl-C


def dagster_exe() -> Path:
    """The ``dagster`` command of this installation: beside ``sys.executable`` first, then ``PATH``."""
    here = Path(sys.executable).parent
    for name in ("dagster", "dagster.exe"):
        if (here / name).is_file():
            return here / name
    found = shutil.which("dagster")
    if found:
        return Path(found)
    raise DatalabError(f"the `dagster` command is not installed beside {sys.executable} nor on PATH: "
                       "run `bash scripts/setup.sh` (it installs dagster-webserver)")


def command_hint() -> str:
    """How to run ``datalab`` as this process was run: the path when it is not on ``PATH``."""
    exe = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if exe is not None and exe.name == "datalab":
        on_path = shutil.which("datalab")
        if on_path and Path(on_path).resolve() == exe.resolve():
            return "datalab"
        try:
            return os.path.relpath(exe)
        except ValueError:
            return str(exe)
    beside = Path(sys.executable).parent / "datalab"
    if beside.is_file():
        on_path = shutil.which("datalab")
        if on_path and Path(on_path).resolve() == beside.resolve():
            return "datalab"
        rel = os.path.relpath(beside)
        return rel if not rel.startswith("../..") else str(beside)
    return f"{sys.executable} -m datalab.cli.commands"


def _restore_sigint() -> None:  # pragma: no cover - runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_child(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run ``argv`` until it exits or we are told to stop; return its exit code (0 when we stopped it)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True, preexec_fn=_restore_sigint)
    stopping = {"by": 0}

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping["by"] = signum
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # what Ctrl-C does: dagster dev stops its children
                os.killpg(proc.pid, signal.SIGINT)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                rc = proc.wait(timeout=GRACE_S if stopping["by"] else None)
                break
            except subprocess.TimeoutExpired:
                for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                rc = proc.wait()
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing of the UI outlives us
            os.killpg(proc.pid, signal.SIGTERM)
    return 0 if stopping["by"] else rc
