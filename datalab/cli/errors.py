"""One error handler for the whole ``datalab`` command.

Every failure a user can cause (a wrong path, a dead ``DATALAB_URL``, a
refused pull, an unknown dataset) ends as ONE line on stderr, "what failed —
what to do", and an exit code that says which kind of failure it was, so a
script can branch on it without parsing text. The traceback is printed only
with ``datalab --debug`` or ``DATALAB_DEBUG=1``: a traceback is for the
people who fix datalab, not for the person who mistyped a directory.

Exit codes (also in the README):

====  =====================================================================
0     success
1     refused or failed: a rejected push, a failed validation, a policy refusal
2     wrong usage: unknown option, bad value, invalid contract
3     not found: no such dataset, version, contract, principal or token
4     filesystem: a path that does not exist, is not a directory, or may not be written
5     service unreachable: ``DATALAB_URL`` (or the catalog database) does not answer
70    internal error: a bug in datalab (``EX_SOFTWARE``); rerun with ``--debug`` and report it
====  =====================================================================
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from datalab import config
from datalab.errors import (
    ContractError,
    DatalabError,
    IntegrityError,
    MissingFile,
    NotFound,
    PolicyRefused,
    UsageError,
)

OK, REFUSED, USAGE, NOT_FOUND, FILESYSTEM, UNREACHABLE, BUG = 0, 1, 2, 3, 4, 5, 70
INTERRUPTED = 130

# The CLI's consoles (datalab.cli.commands and its command modules share them).
out = Console()
err = Console(stderr=True)


def debug() -> bool:
    """True when tracebacks were asked for (``--debug`` sets ``DATALAB_DEBUG=1``)."""
    return config.debug()


def _is(e: BaseException, module: str, name: str) -> bool:
    """``isinstance`` against a class of an optional library, without importing it."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod else None
    return isinstance(cls, type) and isinstance(e, cls)


def _service_url() -> str:
    return config.service_url() or "the lab service"


def _os_hint(e: OSError) -> str:
    """What to do about a filesystem error, by its kind."""
    if isinstance(e, NotADirectoryError):
        return "give a directory (or a path that does not exist yet) instead of a file"
    if isinstance(e, IsADirectoryError):
        return "give a file, not a directory"
    if isinstance(e, FileNotFoundError):
        return "check the path; its parent directory must exist"
    if isinstance(e, PermissionError):
        return "choose a path you may write, or fix its permissions"
    if isinstance(e, FileExistsError):
        return "remove it or choose another path"
    return "check the path, the free space and the permissions"


def classify(e: BaseException) -> tuple[int, str, str]:
    """(exit code, what failed, what to do) for an exception that reached the CLI."""
    msg = str(e).strip()
    code, what, todo = _classify(e, msg)
    return code, what, (getattr(e, "hint", None) or todo)


def _classify(e: BaseException, msg: str) -> tuple[int, str, str]:
    from datalab.policy.auth import AuthError

    if isinstance(e, ContractError):
        return USAGE, msg, "fix the contract; `datalab contract lint FILE` lists every problem with its field path"
    if isinstance(e, UsageError):
        return USAGE, msg, "see `datalab COMMAND --help`"
    if isinstance(e, MissingFile):
        return FILESYSTEM, msg, "check the path"
    if isinstance(e, NotFound):
        return NOT_FOUND, msg or "not found", "check the name (`datalab list`, `datalab contract list`)"
    if isinstance(e, PolicyRefused):
        return REFUSED, msg, "`datalab policy explain NAME@VERSION` shows which input set the rule"
    if isinstance(e, AuthError):
        return REFUSED, msg, "check DATALAB_TOKEN (`datalab token list` on the lab shows whether it expired or was revoked)"
    if isinstance(e, IntegrityError):
        return REFUSED, msg, "the stored bytes changed since they were recorded; tell the lab's operators"
    remote = _remote_status(e)
    if remote is not None:
        if remote in (401, 403):
            return REFUSED, msg, "check DATALAB_TOKEN and the principal's roles"
        if remote == 404:
            return NOT_FOUND, msg, "check the name; over HTTP you see only what your token may reach"
        if remote in (400, 409, 413, 415, 422):
            return USAGE, msg, "fix the request as the message says"
        return UNREACHABLE, msg, f"the service at {_service_url()} failed; try again later or ask its operators"
    if isinstance(e, DatalabError):
        return REFUSED, msg, "fix what the message names (file, field or rule) and run the command again"
    if _is(e, "httpx", "TransportError"):
        return (UNREACHABLE, f"cannot reach {_service_url()} ({type(e).__name__}: {msg or 'no answer'})",
                "start the server (`datalab serve`) or fix DATALAB_URL; unset DATALAB_URL to use the local lab")
    if _is(e, "sqlalchemy.exc", "OperationalError") and "connect" in msg.lower():
        return (UNREACHABLE, f"cannot reach the catalog database ({msg.splitlines()[0][:200]})",
                "start the database or fix DATALAB_CATALOG_URL")
    if isinstance(e, OSError) and (getattr(e, "filename", None) or isinstance(e, PermissionError)):
        where = e.filename if e.filename is not None else "a path"
        return FILESYSTEM, f"{where}: {e.strerror or msg}", _os_hint(e)
    if isinstance(e, KeyboardInterrupt):
        return INTERRUPTED, "interrupted", "run the command again to finish it"
    first = msg.splitlines()[0][:300] if msg else ""
    return (BUG, f"internal error ({type(e).__name__}{': ' + first if first else ''})",
            "this is a bug in datalab: rerun with --debug (or DATALAB_DEBUG=1) and report the traceback")


def _remote_status(e: BaseException) -> int | None:
    """The HTTP status of a refusal from the lab service, else None."""
    from datalab.client import RemoteError

    return e.status if isinstance(e, RemoteError) else None


def message(e: BaseException, expected: bool = False) -> tuple[int, str]:
    """(exit code, the one line) for ``e``.

    ``expected``: a command caught ``e`` on purpose (a ``ValueError`` from
    parsing what the user gave, say), so it is the user's input, not a bug.
    """
    code, what, todo = classify(e)
    if expected and code == BUG:
        code, what, todo = (USAGE if isinstance(e, ValueError) else REFUSED), str(e).strip(), "see `datalab COMMAND --help`"
    what = what.replace("\n", "; ") if not isinstance(e, ContractError) else what
    return code, f"{what} — {todo}"


def report(e: BaseException, console: Console | None = None, expected: bool = False) -> int:
    """Print ``e`` as the CLI shows it (the traceback first, with --debug) and return its exit code."""
    c = console or err
    code, line = message(e, expected)
    if debug():
        traceback.print_exception(e, file=sys.stderr)
    label = "internal error" if code == BUG else "error"
    c.print(f"[bold red]{label}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return code


def fail(e: BaseException, console: Console | None = None) -> NoReturn:
    """Report ``e`` and leave the command with its exit code (for the commands' own ``except``)."""
    raise typer.Exit(report(e, console, expected=True)) from None


def run(app: Any) -> NoReturn:
    """Run the Typer ``app``; any exception that escapes a command is reported here, once."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as e:
        sys.exit(report(e))
    sys.exit(0)
