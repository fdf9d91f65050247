"""What every kind's assets share: asset keys, the partitions of a contract's deliveries, metadata tables.

Kept apart from the kinds' factories (``assets/timeseries.py``, ``assets/cad.py``) so that no kind's
assets import another kind's, and the dataset assets and the retention job name keys the same way.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import polars as pl

from datalab.contracts.contract import Contract


def key_prefix(contract: Contract) -> list[str]:
    """``<tenant>/<product>``: the asset key prefix of a contract's assets (dashes are not allowed in keys)."""
    return [contract.tenant.replace("-", "_"), contract.product.replace("-", "_")]


# The tags of a run over a range of partitions (Dagster's own names): a run over several small
# deliveries of one contract (DATALAB_RUN_BATCH; datalab.runs.plan_batches).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def range_request(batch: list[str], run_key: str | None = None, **kw) -> dg.RunRequest:
    """The run request of one delivery (its partition) or of neighbouring deliveries (their range)."""
    if len(batch) == 1:
        return dg.RunRequest(partition_key=batch[0], run_key=run_key or batch[0], **kw)
    tags = {**kw.pop("tags", {}), RANGE_START: batch[0], RANGE_END: batch[-1], "datalab/deliveries": str(len(batch))}
    return dg.RunRequest(run_key=run_key or f"{batch[0]}..{batch[-1]}", tags=tags, **kw)


def each_delivery(context: dg.AssetExecutionContext, one: Callable[[str], dict[str, Any]]) -> dg.MaterializeResult:
    """A raw asset's result over the run's deliveries (one, or a range): ``one(d)`` does ``d`` and gives its metadata."""
    with partitions_read_once(context.instance):
        keys = context.partition_keys
        for d in keys:
            md = one(d)
            if len(keys) == 1:
                return dg.MaterializeResult(metadata=md)
            context.add_asset_metadata(md, partition_key=d)
    return dg.MaterializeResult(metadata={"deliveries": dg.MetadataValue.int(len(keys))})


@contextmanager
def partitions_read_once(inst: dg.DagsterInstance) -> Iterator[None]:
    """Within the block, each dynamic partitions definition's keys are read from ``inst`` once.

    Dagster loads every key of a dynamic definition each time it resolves a
    run's partition range: for the planned events, the outputs, each
    ``context.partition_keys``, and each ``add_asset_metadata(partition_key=)``
    (two a delivery here). A run of 12 small deliveries read them 33 times;
    with 40,000 live partitions (a month of a delivery a minute, within
    ``DATALAB_PARTITION_KEEP_DAYS``) each read took 115 ms of CPU and the run
    344 instead of 45 core-ms a delivery (docs/performance.md). A run's own
    partitions are all there before it starts (whoever launched it added
    them), so one read serves it; one that adds or deletes partitions inside
    the block reads again. Used around an asset step's deliveries (any
    launcher: in process, the daemon's, Celery's) and around a whole
    in-process run (``pipelines.runner``); inside a block, another is a no-op.
    """
    if "get_dynamic_partitions" in vars(inst):  # inside one already
        yield
        return
    read = type(inst).get_dynamic_partitions
    add, delete = type(inst).add_dynamic_partitions, type(inst).delete_dynamic_partition
    keys: dict[str, Sequence[str]] = {}

    def cached(partitions_def_name: str) -> Sequence[str]:
        if partitions_def_name not in keys:
            keys[partitions_def_name] = read(inst, partitions_def_name)
        return keys[partitions_def_name]

    def added(partitions_def_name: str, partition_keys: Sequence[str]) -> None:
        keys.pop(partitions_def_name, None)
        add(inst, partitions_def_name, partition_keys)

    def deleted(partitions_def_name: str, partition_key: str) -> None:
        keys.pop(partitions_def_name, None)
        delete(inst, partitions_def_name, partition_key)

    inst.get_dynamic_partitions, inst.add_dynamic_partitions, inst.delete_dynamic_partition = cached, added, deleted
    try:
        yield
    finally:
        del inst.get_dynamic_partitions, inst.add_dynamic_partitions, inst.delete_dynamic_partition


def partitions_for(contract: Contract) -> dg.DynamicPartitionsDefinition:
    """One partition per accepted delivery of the contract, added by the sensor."""
    return dg.DynamicPartitionsDefinition(name=f"{contract.slug}__deliveries")


def preview(path: str, n: int = 10) -> dg.MetadataValue:
    df = pl.read_parquet(path, n_rows=n)
    return dg.MetadataValue.md(df.to_pandas().to_markdown(index=False) if hasattr(df.to_pandas(), "to_markdown") else str(df))


def md_table(df: pl.DataFrame) -> dg.MetadataValue:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in df.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))
