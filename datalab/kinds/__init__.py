"""Kinds of data: the one seam where sensor series, CAD files (and whatever comes next) differ.

A contract names its kind (``customProperties: kind``). Everything the lab
does the same way for every kind (landing, receipts, the GX runner,
publishing to Iceberg, policy, pull, cards) lives in the core and asks the
contract's kind, through this registry, for what differs: how staged files
are checked, how a delivery becomes the raw and the curated table, the
suite derived from the contract, the curated table's columns and flags, the
card's section, the files attached to a version and pulled with it, and the
contract's own section. The Dagster layer finds each kind's asset factory by
``Kind.asset_factory`` (``assets/registry.py``).

In the manner of pyiceberg's catalog registry: a name maps to a loader that
imports the implementation only when a contract of that kind is met::

    kind = get_kind("cad")          # or kind_of(contract)
    receipts = kind.check_staged(contract, staged, s)

A new kind is a package with a ``Kind`` (see ``datalab/cad/kind.py``) and
one :func:`register` call (or one line in ``_LOADERS`` below); no core
module changes (``tests/test_kinds.py`` checks both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from datalab.errors import ContractError
from datalab.kinds import sections
from datalab.kinds.base import Attached, CuratedSchema, CurationRecord, Kind, Staged
from datalab.kinds.sections import DEFAULT, Section

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datalab.contracts.contract import Contract
    from datalab.store.manifest import Manifest

__all__ = [
    "DEFAULT",
    "Attached",
    "CuratedSchema",
    "CurationRecord",
    "Kind",
    "Section",
    "Staged",
    "get_kind",
    "kind_of",
    "kind_of_manifest",
    "register",
    "registered",
    "unregister",
]


def _timeseries() -> Kind:
    from datalab.timeseries.kind import TimeseriesKind

    return TimeseriesKind()


def _cad() -> Kind:
    from datalab.cad.kind import CadKind

    return CadKind()


_LOADERS: dict[str, Callable[[], Kind]] = {"timeseries": _timeseries, "cad": _cad}
# The manifest key under which a kind describes what it attaches to a version (its Kind.manifest_key),
# known before the kind loads: reading a manifest loads only the kind it belongs to.
_MANIFEST_KEYS: dict[str, str] = {"cad": "cad"}
_LOADED: dict[str, Kind] = {}


def register(name: str, loader: Callable[[], Kind], section: Callable[[], Section] | None = None,
             manifest_key: str | None = None) -> None:
    """Register a kind: ``loader`` builds its ``Kind``; ``section`` its contract section (default: none);
    ``manifest_key``: its ``Kind.manifest_key``."""
    unregister(name)
    _LOADERS[name] = loader
    if manifest_key is not None:
        _MANIFEST_KEYS[name] = manifest_key
    sections.register(name, section or Section)


def unregister(name: str) -> None:
    _LOADERS.pop(name, None)
    _MANIFEST_KEYS.pop(name, None)
    _LOADED.pop(name, None)
    sections.unregister(name)


def registered() -> tuple[str, ...]:
    """The names of the registered kinds, in registration order."""
    return tuple(_LOADERS)


def get_kind(name: str, contract: str | None = None) -> Kind:
    """The kind called ``name``; ``contract`` (an id or path) names who asked, for the error."""
    if name not in _LOADERS:
        raise ContractError(f"contract {contract}" if contract else "kind",
                            [f"unknown kind {name!r} (known kinds: {', '.join(registered())})"])
    if name not in _LOADED:
        kind = _LOADERS[name]()
        if not isinstance(kind, Kind):
            raise TypeError(f"kind {name!r}: {type(kind).__name__} does not implement datalab.kinds.Kind")
        if kind.manifest_key != _MANIFEST_KEYS.get(name):
            raise TypeError(f"kind {name!r}: manifest key {kind.manifest_key!r}, registered as {_MANIFEST_KEYS.get(name)!r}")
        _LOADED[name] = kind
    return _LOADED[name]


def kind_of(contract: Contract) -> Kind:
    """The kind of ``contract``."""
    return get_kind(contract.kind, contract.id)


def kind_of_manifest(manifest: Manifest) -> Kind:
    """The kind of a published version: the kind whose section the manifest carries, else the default kind."""
    for name, key in _MANIFEST_KEYS.items():
        if manifest.section(key):
            return get_kind(name)
    return get_kind(DEFAULT)
