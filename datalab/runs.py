"""What the faces (CLI, service, demo) ask of the lab's pipelines, and where they find them.

The core never imports Dagster; the commands that run pipelines (``datalab
run``, ``publish``, ``ui``, ``demo``, ``retention enforce``, the service's
``/run`` and ``/publish``) get a :class:`Runner` instead. The Dagster layer
provides it (``pipelines.runner:DAGSTER``) and declares it in ``pyproject.toml``
as an entry point of the group ``datalab.runners``, the way a plug-in is
found (pyiceberg's catalogs, pytest's plugins): :func:`runner` looks the group
up, so an install without the pipelines gets a clear error instead of an
import from ``pipelines`` inside the core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from datalab.errors import DatalabError

if TYPE_CHECKING:
    from datalab.config import Settings

GROUP = "datalab.runners"
DEFAULT = "dagster"


# A run over several deliveries holds their verdicts until all are done: past this many rows
# together a delivery waits for the next run, and one larger than this runs alone, so a large
# delivery's verdict never waits on others and a small one's never on a large one.
BATCH_ROWS = 1_000_000


def plan_batches(pending: Sequence[str], order: Sequence[str], rows: Mapping[str, int | None],
                 most: int, most_rows: int = BATCH_ROWS) -> list[list[str]]:
    """Cut one contract's pending deliveries into runs, oldest first.

    A run covers a range of the contract's partitions (``order``: the order
    they were added in), so a run's deliveries are neighbours there: a
    delivery already settled between two pending ones ends a run. At most
    ``most`` deliveries and ``most_rows`` rows per run (rows unknown count
    as none). Deliveries without a partition are left out.
    """
    pos = {d: i for i, d in enumerate(order)}
    out: list[list[str]] = []
    cur: list[str] = []
    cur_rows = 0
    for d in sorted((d for d in set(pending) if d in pos), key=pos.__getitem__):
        n = rows.get(d) or 0
        if cur and (pos[d] != pos[cur[-1]] + 1 or len(cur) >= most or cur_rows + n > most_rows):
            out.append(cur)
            cur, cur_rows = [], 0
        cur.append(d)
        cur_rows += n
    if cur:
        out.append(cur)
    return out


@dataclass
class DeliveryRun:
    """One delivery's run: what ``datalab run`` prints and ``POST /run`` returns."""

    contract_id: str
    delivery_id: str
    success: bool
    validation_ok: bool | None
    message: str


@runtime_checkable
class Runner(Protocol):
    """The lab's pipelines as the faces use them."""

    def run_pending(self, contract_ref: str | None = None, on_event: Callable[[DeliveryRun], None] | None = None,
                    parallel: int | None = None) -> list[DeliveryRun]:
        """Materialise every accepted, not yet validated delivery (optionally of one contract)."""
        ...

    def publish(self, dataset: str) -> dict[str, Any]:
        """Publish a new version of ``dataset`` if its inputs changed; the version's metadata."""
        ...

    def instance(self) -> Any:
        """Prepare (and return) the orchestrator's instance under the lab's home (``datalab ui``)."""
        ...

    def purge(self, contract_id: str, deliveries: list[str], versions: list[tuple[str, str]],
              s: Settings) -> dict[str, Any]:
        """Delete the orchestrator's records of purged deliveries and withdrawn versions (retention)."""
        ...

    def rollup(self, dry_run: bool, actor: str) -> list[dict[str, Any]]:
        """Remove the partitions of settled deliveries (``datalab partitions rollup``): one report per
        contract, with its ``summary`` line and the ``deliveries`` removed (or that would be)."""
        ...


class RunnerMissing(DatalabError):
    """No runner is installed (a push/pull-only install, or the package's metadata predates the group)."""


def runner(name: str = DEFAULT) -> Runner:
    """The runner ``name`` of the ``datalab.runners`` entry point group; RunnerMissing if there is none."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise RunnerMissing(f"this command needs the lab's pipelines (Dagster): no {name!r} runner in the "
                            f"{GROUP!r} entry points (reinstall the lab: pip install -e .)")
    try:
        obj = found[0].load()
    except ImportError as e:
        raise RunnerMissing(f"this command needs the lab's pipelines (Dagster): {e}") from e
    if not isinstance(obj, Runner):
        raise RunnerMissing(f"the {GROUP!r} entry point {name!r} ({found[0].value}) is not a datalab runner")
    return obj


def optional_runner(name: str = DEFAULT) -> Runner | None:
    """The runner, or None where none is installed (callers that work without one)."""
    try:
        return runner(name)
    except RunnerMissing:
        return None
