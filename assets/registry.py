"""The Dagster asset factories of the kinds of data, by the name each kind gives (``Kind.asset_factory``).

A kind's factory lives in ``assets/<name>.py`` and registers itself with
``@asset_factory("<name>")``; :func:`factory_for` imports that module the
first time a contract of the kind is met, so ``pipelines/definitions.py``
loops over the contracts and never names a kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import dagster as dg

from datalab.contracts.contract import Contract
from datalab.errors import ContractError
from datalab.kinds import kind_of

Factory = Callable[[Contract], list[dg.AssetsDefinition]]
_FACTORIES: dict[str, Factory] = {}


def asset_factory(name: str) -> Callable[[Factory], Factory]:
    """Register the decorated function as the asset factory of the kinds that name ``name``."""

    def register(fn: Factory) -> Factory:
        _FACTORIES[name] = fn
        return fn

    return register


def factory_for(contract: Contract) -> Factory | None:
    """The asset factory of ``contract``'s kind (None: its kind has no assets, or is not registered)."""
    try:
        name = kind_of(contract).asset_factory
    except ContractError:
        return None
    if name not in _FACTORIES:
        try:
            importlib.import_module(f"{__package__}.{name}")  # the kind's factory module registers itself
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
    return _FACTORIES.get(name)
