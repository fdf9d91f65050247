"""The lab's settings as a Dagster resource: how a profile reaches the assets.

``DATALAB_PROFILE`` is read once, in :func:`datalab.config.settings`; the
definitions hand the resolved settings to every asset as the ``lab`` resource.
The asset code is the same in both profiles (as in Dagster's reference
projects, where local and production differ only in the resources given to
the same assets).

Why the resource also exports its values to the step's environment: in the
cluster profile a step runs in a Celery worker on another machine, whose own
environment may differ from the process that launched the run. The launcher
puts its settings into the run's config (:func:`run_config`), so every step of
a run, wherever it executes, curates from and writes to the same catalog and
storage. The core (``datalab``, which never imports Dagster) takes the settings
the assets hand it (``lab.settings()``, resolved once per step), and the
catalog through :meth:`LabResource.catalog`; the values come from the
environment, which this resource pins for the cluster profile's workers.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from datalab.config import Settings, settings
from datalab.store.catalog import Catalog
from datalab.store.storage import Store, store

# resource field -> the environment variable the core reads
_ENV = {
    "profile": "DATALAB_PROFILE",
    "home": "DATALAB_HOME",
    "catalog_url": "DATALAB_CATALOG_URL",
    "contracts_dir": "DATALAB_CONTRACTS",
    "storage": "DATALAB_STORAGE",
}


class LabResource(dg.ConfigurableResource):
    """Where the lab keeps its catalog and files, for the steps of one run."""

    profile: str = "local"
    home: str = ""
    catalog_url: str = ""
    contracts_dir: str = ""
    storage: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.profile != "cluster":
            # Local runs execute in the launcher's process, whose environment
            # these values came from: exporting them would only pin them there
            # for whatever that process does next (another lab, a test).
            return
        for field, var in _ENV.items():
            value = getattr(self, field)
            if value:
                os.environ[var] = value
            elif field == "storage":  # local files: an empty value is a setting too
                os.environ.pop(var, None)

    def settings(self) -> Settings:
        """The core's settings as this run sees them (the assets pass them to the core)."""
        return settings()

    def catalog(self, s: Settings | None = None) -> Catalog:
        """The lab's catalog (receipts, audit, Iceberg tables) for these settings."""
        return Catalog((s or self.settings()).catalog_url)

    def files(self, s: Settings | None = None) -> Store:
        """The lab's files for these settings: a folder under home, or the object store of ``storage``.

        The object store's endpoint and keys are not part of the run's
        config (no secret travels with a run): each worker reads the standard
        AWS variables of its own environment, and its own scratch folder
        (``DATALAB_SCRATCH``).
        """
        return store(s or self.settings())


def resource_config(s: Settings | None = None) -> dict[str, str]:
    """The ``lab`` resource's values for these settings."""
    s = s or settings()
    return {"profile": s.profile, "home": str(s.home), "catalog_url": s.catalog_url,
            "contracts_dir": str(s.contracts_dir), "storage": s.storage or ""}


def lab_resource(s: Settings | None = None) -> LabResource:
    return LabResource(**resource_config(s))


def run_config(s: Settings | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run config that pins the launcher's settings for every step of the run."""
    cfg = dict(base or {})
    cfg["resources"] = {**cfg.get("resources", {}), "lab": {"config": resource_config(s)}}
    return cfg
