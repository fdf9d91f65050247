"""The lab's key files (pseudonyms, audit chain): created once, whole, whoever asks first.

A lab's first runs side by side (worker processes) asked for the pseudonym
key at the same moment: one created it, another's exclusive create then
failed (FileExistsError, the run failed), and a third could have read the
file while it was still empty. Found in a clean-clone CI run (the press
contract's run failed, its delivery then ran alone).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import time
from pathlib import Path

import pytest

from datalab.config import lab_key
from datalab.errors import UsageError

WORKERS = 8


def _ask(path: str, at: float, out: mp.Queue) -> None:
    """In a new process: wait for the common start, then ask for the key (the hex, or the error)."""
    while time.time() < at:
        pass
    try:
        out.put(lab_key(Path(path)).hex())
    except Exception as e:  # reported to the test
        out.put(f"error: {type(e).__name__}: {e}")


@pytest.mark.parametrize("name", ["pseudonym.key", "audit.key"])
def test_processes_asking_at_once_get_one_whole_key(tmp_path: Path, name: str) -> None:
    path = tmp_path / "secrets" / name
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    at = time.time() + 3.0  # after every process has started (spawned interpreters take a while)
    procs = [ctx.Process(target=_ask, args=(str(path), at, out)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert not [g for g in got if g.startswith("error")], got
    assert len(set(got)) == 1 and len(bytes.fromhex(got[0])) == 32
    assert path.read_text().strip() == got[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == [name]  # no temporary file left behind


def test_a_damaged_key_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    for bad in ("", "abc", "zz" * 32):
        path.write_text(bad)
        with pytest.raises(UsageError, match=r"pseudonym\.key.*64 hexadecimal digits"):
            lab_key(path)
        assert path.read_text() == bad


def test_the_pseudonym_and_audit_keys_come_from_their_files(lab: Path) -> None:
    from datalab.config import settings
    from datalab.policy import pseudonym
    from datalab.store import catalog

    k = pseudonym.key()
    assert k == bytes.fromhex((settings().secrets / "pseudonym.key").read_text()) and len(k) == 32
    assert catalog.audit_key() == bytes.fromhex((settings().secrets / "audit.key").read_text())
    assert pseudonym.key() == k  # created once
