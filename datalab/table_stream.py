"""The rows of a dataset version as a stream of Arrow batches, for Iceberg writes.

Publishing used to collect every input delivery into one Arrow table before
appending it: 4.4 GB of peak memory for 10 M rows. pyiceberg (>= 0.12)
writes a ``pa.RecordBatchReader`` in bounded micro-batches, so the rows are
streamed instead, delivery by delivery, each conformed to the version's
schema (columns that one contract lacks are null, types unified). The order
is deterministic: deliveries by (contract, delivery id), each in its curated
order (sensor, entity, time).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 1_000_000
# Rows per Iceberg write call. pyiceberg 0.12 microbatches a RecordBatchReader
# into files, but hands the file tasks to ``ThreadPoolExecutor.map``, which
# submits them all at once and so drains the whole reader into memory (+1.4 GB
# per 5 M rows; a 200 M-row publish was OOM-killed at 24 GB). Publishing
# therefore writes a version as several appends of at most this many rows in
# one transaction: one commit, bounded memory.
COMMIT_ROWS = 2_000_000


@dataclass(frozen=True)
class Part:
    """One curated delivery file and the literal columns publishing adds to it."""

    path: Path
    contract_id: str
    tenant: str
    contract_version: str
    delivery_id: str


def _conform(df: pl.DataFrame, part: Part, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    df = df.with_columns(
        tenant=pl.lit(part.tenant), contract_id=pl.lit(part.contract_id), contract_version=pl.lit(part.contract_version)
    )
    cols = [pl.col(n).cast(t) if n in df.columns else pl.lit(None, t).alias(n) for n, t in schema.items()]
    return df.select(cols)


def batches(parts: list[Part], schema: dict[str, pl.DataType], only: set[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Conformed batches of ``parts`` (restricted to delivery ids in ``only``)."""
    for part in sorted(parts, key=lambda p: (p.contract_id, p.delivery_id)):
        if only is not None and part.delivery_id not in only:
            continue
        for rb in pq.ParquetFile(part.path).iter_batches(batch_size=BATCH_ROWS):
            yield from _conform(pl.from_arrow(rb), part, schema).to_arrow().to_batches()  # type: ignore[arg-type]


def readers(parts: list[Part], schema: dict[str, pl.DataType], only: set[str] | None = None,
            rows: int | None = None) -> Iterator[pa.RecordBatchReader]:
    """The version's rows as consecutive readers of at most ``rows`` rows each (at least one reader).

    Each reader must be consumed before the next is taken: they share one
    pass over the curated files.
    """
    rows = rows or COMMIT_ROWS
    it = batches(parts, schema, only)
    sch = arrow_schema(schema)
    pending: list[pa.RecordBatch | None] = [next(it, None)]

    def take() -> Iterator[pa.RecordBatch]:
        n = 0
        while pending[0] is not None and (n == 0 or n + pending[0].num_rows <= rows):
            b = pending[0]
            n += b.num_rows
            pending[0] = next(it, None)
            yield b

    yield pa.RecordBatchReader.from_batches(sch, take())
    while pending[0] is not None:
        yield pa.RecordBatchReader.from_batches(sch, take())


def arrow_schema(schema: dict[str, pl.DataType]) -> pa.Schema:
    """The Arrow schema publishing writes, as Polars converts it."""
    return pl.DataFrame(schema=schema).to_arrow().schema
