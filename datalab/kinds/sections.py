"""The kinds' contract sections: the one table contract loading reads.

A contract names its kind (``customProperties: kind``); the kind decides
what else the contract holds: a section of its own under a
``customProperties`` key (CAD: ``cad``, parsed and linted by the pure
``datalab/cad/settings.py``), and whether the schema's properties are the
delivered record's columns with roles (time series: entity, time,
measurements), which contract loading then lints.

This table sits below ``datalab.contracts.contract`` (which imports it) and above
nothing: a section parser must not import the contract. The kinds
themselves (``datalab.kinds``) sit above the contract; registering a kind
there registers its section here too (:func:`datalab.kinds.register`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The kind of a contract that names none (the lab began with sensor data).
DEFAULT = "timeseries"


@dataclass(frozen=True)
class Section:
    """What a kind adds to a contract.

    ``key``: the ``customProperties`` key of the kind's own section (None: none);
    ``lint(value, where)``: its problems, each prefixed by ``where``;
    ``build(value)``: the parsed section, kept on ``Contract.section``;
    ``columns``: the schema's properties are the delivered record's columns
    with roles (entity, time, measurement, attribute), linted as such;
    ``sources``: the files of the parser, hashed into the lint cache's key.
    """

    key: str | None = None
    lint: Callable[[Any, str], list[str]] | None = None
    build: Callable[[Any], Any] | None = None
    columns: bool = False
    sources: tuple[str, ...] = ()


def _timeseries() -> Section:
    return Section(columns=True)


def _cad() -> Section:
    from datalab.cad import settings as cad_settings

    return Section(key="cad", lint=cad_settings.lint, build=cad_settings.build, sources=(cad_settings.__file__,))


_LOADERS: dict[str, Callable[[], Section]] = {"timeseries": _timeseries, "cad": _cad}
_LOADED: dict[str, Section] = {}


def register(name: str, loader: Callable[[], Section]) -> None:
    """Add (or replace) a kind's section loader; called by ``datalab.kinds.register``."""
    _LOADERS[name] = loader
    _LOADED.pop(name, None)


def unregister(name: str) -> None:
    _LOADERS.pop(name, None)
    _LOADED.pop(name, None)


def names() -> tuple[str, ...]:
    """The kinds a contract may name, in registration order."""
    return tuple(_LOADERS)


def get(name: str) -> Section:
    """The section of kind ``name`` (KeyError for an unknown kind: contract lint reports it first)."""
    if name not in _LOADED:
        _LOADED[name] = _LOADERS[name]()
    return _LOADED[name]


def sources() -> list[Path]:
    """The parser files of every kind's section (for the lint cache's key)."""
    return [Path(f) for n in names() for f in get(n).sources]
