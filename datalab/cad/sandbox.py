"""Every CAD parse in its own process, with a time limit and a memory limit.

CAD parsers are large C++ code bases fed with outside files. A file that
makes one hang, crash or allocate without bound must cost the lab one
rejected file, never the push, the worker pool or the host. So each file is
parsed in a fresh process forked from a fork server that has OpenCASCADE,
ezdxf and matplotlib already imported (a fork costs milliseconds; importing
OCP costs two seconds), under:

* ``RLIMIT_AS``: the address space may grow by at most ``memory_bytes``
  beyond the warm process's, so a runaway allocation fails inside the
  child (MemoryError, or the C++ allocator's abort);
* ``RLIMIT_CPU`` and a wall-clock deadline: past ``timeout_s`` the parent
  kills the child (SIGKILL).

The parent runs up to ``workers`` children at once and reads each result
from a pipe. No result, a signal, a limit: the file is rejected with that
reason and the next file starts. Results are plain dicts (pickled), never
objects of the parser.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY = 2 << 30
_CTX: Any = None


@dataclass(frozen=True)
class Job:
    key: str  # the caller's id for the file (its sha256 or position)
    path: Path
    name: str
    thumb: Path | None = None


@dataclass
class Outcome:
    key: str
    name: str
    ok: bool
    result: dict[str, Any] | None = None
    reason: str | None = None
    kind: str = "ok"  # ok | rejected | timeout | memory | crash
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _context() -> Any:
    """The fork-server context, started once per process with the parser preloaded."""
    global _CTX
    if _CTX is None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MPLBACKEND", "Agg")
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["datalab.cad.sandbox", "datalab.cad._preload"])
        _CTX = ctx
    return _CTX


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def default_target(job: Job) -> dict[str, Any]:
    from datalab.cad import worker

    return worker.parse(job.path, job.name, job.thumb)


def _child(conn: Connection, job: Job, target: Callable[[Job], dict[str, Any]], memory_bytes: int, timeout_s: float) -> None:
    """Runs in the forked process: set the limits, parse, send one message."""
    try:
        limit = _vm_bytes() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cpu = max(1, int(timeout_s) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    except (ValueError, OSError):  # pragma: no cover - e.g. a hard limit below ours
        pass
    try:
        # OpenCASCADE prints its syntax complaints to std::cout; the reason goes
        # back through the pipe, so the child's stdout is silenced.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:  # pragma: no cover
        pass
    try:
        result = target(job)
        if isinstance(result, dict):
            # what this parse cost, measured in the child itself (the parent cannot: the child is the fork server's)
            result["sandbox_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        conn.send(("ok", result))
    except MemoryError:
        conn.send(("memory", f"{job.name}: the parser exceeded the memory limit of {memory_bytes / 2**20:,.0f} MiB (rule: sandbox memory limit)"))
    except Exception as e:  # every parser error is a reason, never a crash of the pool
        from datalab.cad.sniff import NotCad
        from datalab.cad.worker import ParseError

        if isinstance(e, (NotCad, ParseError)):
            msg = str(e)
        elif "bad_alloc" in repr(e) or "OutOfMemory" in type(e).__name__:
            conn.send(("memory", f"{job.name}: the parser exceeded the memory limit of {memory_bytes / 2**20:,.0f} MiB (rule: sandbox memory limit)"))
            return
        else:
            msg = f"{job.name}: the parser failed: {type(e).__name__}: {str(e)[:300]}"
        conn.send(("rejected", msg))
    finally:
        conn.close()


def _signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit status {code}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run(
    jobs: list[Job],
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY,
    target: Callable[[Job], dict[str, Any]] = default_target,
) -> list[Outcome]:
    """Parse every job in its own process; outcomes in the order of ``jobs``."""
    ctx = _context()
    workers = max(1, workers or min(len(jobs), os.cpu_count() or 1))
    pending = list(enumerate(jobs))[::-1]
    running: dict[Any, tuple[int, Job, Any, Connection, float]] = {}
    out: list[Outcome | None] = [None] * len(jobs)

    def finish(i: int, job: Job, proc: Any, conn: Connection, started: float, msg: Any) -> None:
        secs = round(time.perf_counter() - started, 4)
        if msg is not None:
            kind, payload = msg
            out[i] = Outcome(job.key, job.name, kind == "ok", payload if kind == "ok" else None,
                             None if kind == "ok" else payload, kind if kind != "ok" else "ok", secs)
        else:
            proc.join(1.0)
            out[i] = Outcome(job.key, job.name, False, None,
                             f"{job.name}: the parser crashed ({_signal_name(proc.exitcode)}) (rule: sandboxed parse)",
                             "crash", secs)
        conn.close()
        proc.join(5.0)

    while pending or running:
        while pending and len(running) < workers:
            i, job = pending.pop()
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, job, target, memory_bytes, timeout_s), daemon=True)
            proc.start()
            child.close()
            running[parent] = (i, job, proc, parent, time.perf_counter())
        now = time.perf_counter()
        deadline = min(r[4] for r in running.values()) + timeout_s
        ready = wait(list(running), timeout=max(0.0, deadline - now))
        for conn in ready:
            i, job, proc, _, started = running.pop(conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = None
            finish(i, job, proc, conn, started, msg)
        now = time.perf_counter()
        for conn, (i, job, proc, _, started) in list(running.items()):
            if now - started >= timeout_s:
                proc.kill()
                proc.join(5.0)
                running.pop(conn)
                conn.close()
                out[i] = Outcome(job.key, job.name, False, None,
                                 f"{job.name}: no result within the time limit of {timeout_s:g} s; the parser was killed "
                                 "(rule: sandbox time limit)", "timeout", round(now - started, 4))
    return [o for o in out if o is not None]
