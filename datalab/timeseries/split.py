"""One pass that splits a delivery's raw table into a file per curation bucket.

A delivery larger than one curation bucket is curated bucket by bucket
(``curate.series_buckets``), and each bucket's plan reads the whole raw table
to pick its series: a scan of every row per bucket (and one per long
series, streamed to a file of its own). The number of buckets grows with
the delivery, so that reading grows with its square (the measurements are
in docs/performance.md, "Why the code is as it is"). Where those scans
would cost more than ``SPLIT_FROM_PARTS`` scans of one series
(``curate.split_pays``), the rows are split once instead: the raw table is read batch by
batch, each row's bucket computed by an expression, and the rows appended to
that bucket's file in the order they were read (the plans' results depend
on it: the first of two readings with one key is the one kept unflagged).

Memory: one batch, and per bucket at most ``FLUSH_ROWS`` rows waiting to be
written; the files are written with LZ4, which costs a quarter of zstd's
time, as they are read once and deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

# The scans from which the split pays, counted in scans of one series by name (curate.scan_weight):
# one more write and read of every row against a scan of the whole table per part. A scan picking
# one series by name took 0.07-0.08 s per 10 M rows, three series 0.17 s, a bucket picked by hash
# 0.3 s; the split about 3.4 s per 10 M rows, some 40 one-series scans (2026-12-06, 2 cores).
# Measured with 12 one-series parts: 10 M rows curated in 4.6-4.8 s by scans against 6.9-7.4 s
# split, 50 M rows in 22.4-23.2 s at a 1.6 GB peak against 32.4-36.1 s at 2.2-2.3 GB. (It was 8
# parts when every scan hashed every row.)
SPLIT_FROM_PARTS = 32
BATCH_ROWS = 1_000_000
FLUSH_ROWS = 250_000


def split_rows(raw_file: Path, part: pl.Expr, parts: int, folder: Path) -> list[Path]:
    """Split the Parquet file ``raw_file`` into ``parts`` files in ``folder`` by ``part`` (an Int32
    expression giving each row's part, 0 to parts-1); their paths, every one written (empty where no
    row fell in it). Raises ``ValueError`` naming a row that has no part."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{k:05d}.parquet" for k in range(parts)]
    writers: dict[int, Any] = {}
    waiting: dict[int, list[pl.DataFrame]] = {k: [] for k in range(parts)}
    src = pq.ParquetFile(raw_file)
    schema = pl.from_arrow(src.schema_arrow.empty_table()).schema
    try:
        for batch in src.iter_batches(batch_size=BATCH_ROWS):
            df = pl.from_arrow(batch)
            assert isinstance(df, pl.DataFrame)
            keyed = df.with_columns(_part=part)
            missing = keyed.filter(pl.col("_part").is_null() | (pl.col("_part") < 0) | (pl.col("_part") >= parts))
            if missing.height:
                raise ValueError(f"{raw_file}: row {missing.drop('_part').row(0, named=True)} belongs to no part")
            for (k,), rows in keyed.partition_by("_part", maintain_order=True, include_key=False, as_dict=True).items():
                waiting[int(k)].append(rows)
                if sum(w.height for w in waiting[int(k)]) >= FLUSH_ROWS:
                    _flush(int(k), waiting, writers, paths)
        for k in range(parts):
            _flush(k, waiting, writers, paths)
            if k not in writers:  # no row of this part: an empty file with the table's columns
                pl.DataFrame(schema=schema).write_parquet(paths[k], compression="lz4")
    except BaseException:
        for w in writers.values():
            w.close()
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    for w in writers.values():
        w.close()
    return paths


def _flush(k: int, waiting: dict[int, list[pl.DataFrame]], writers: dict[int, Any], paths: list[Path]) -> None:
    """Write part ``k``'s waiting rows as one row group of its file."""
    if not waiting[k]:
        return
    import pyarrow.parquet as pq

    tbl = pl.concat(waiting[k]).to_arrow()
    if k not in writers:
        writers[k] = pq.ParquetWriter(paths[k], tbl.schema, compression="lz4")
    writers[k].write_table(tbl)
    waiting[k] = []
