"""What every kind's assets share: asset keys, the partitions of a contract's deliveries, metadata tables.

Kept apart from the kinds' factories (``assets/timeseries.py``, ``assets/cad.py``) so that no kind's
assets import another kind's, and the dataset assets and the retention job name keys the same way.
"""

from collections.abc import Callable
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
    keys = context.partition_keys
    for d in keys:
        md = one(d)
        if len(keys) == 1:
            return dg.MaterializeResult(metadata=md)
        context.add_asset_metadata(md, partition_key=d)
    return dg.MaterializeResult(metadata={"deliveries": dg.MetadataValue.int(len(keys))})


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
