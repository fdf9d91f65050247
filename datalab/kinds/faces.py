"""The kinds' faces: their CLI sub-commands and their part of ``datalab demo``.

Above the flow (a demo pushes, publishes and pulls), so kept apart from the
registry in ``datalab.kinds``, which the flow itself imports: the CLI and the
demo ask this table, and a kind without a face simply has no entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Faces:
    """``cli``: (sub-command name, Typer app); ``demo_push(contracts, real_dir)`` -> receipts, after the
    firms' first batch; ``demo_publish(out, pipelines, pulled_dir, real_dir)``, after the first publish."""

    cli: tuple[str, Any] | None = None
    demo_push: Callable[..., list[Any]] | None = None
    demo_publish: Callable[..., None] | None = None


def _cad() -> Faces:
    from datalab.cad import cli, demo

    return Faces(cli=("cad", cli.cad_app), demo_push=demo.demo_push, demo_publish=demo.demo_publish)


_LOADERS: dict[str, Callable[[], Faces]] = {"cad": _cad}


def register(name: str, loader: Callable[[], Faces]) -> None:
    _LOADERS[name] = loader


def unregister(name: str) -> None:
    _LOADERS.pop(name, None)


def faces() -> list[Faces]:
    """Every kind's faces, in registration order."""
    return [load() for load in _LOADERS.values()]


def cli_apps() -> list[tuple[str, Any]]:
    """(name, Typer app) of every kind's CLI sub-command."""
    return [f.cli for f in faces() if f.cli is not None]
