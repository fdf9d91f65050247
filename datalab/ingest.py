"""Raw ingest: a delivery's stored files, parsed with the contract's types, into one Parquet file.

Runs the same streaming reader as the push check, batch by batch, into a
pyarrow ParquetWriter, so memory stays bounded by one batch whatever the
delivery's size. Output: ``raw/<tenant>/<product>/<delivery_id>.parquet``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from datalab import landing, state
from datalab.config import Settings, safe_segment, settings
from datalab.contract import Contract
from datalab.errors import DatalabError
from datalab.formats import sniff
from datalab.readers import TimeseriesReader, long_schema


def raw_path(contract: Contract, delivery_id: str, s: Settings) -> Path:
    return s.raw / contract.tenant / contract.product / f"{safe_segment(delivery_id, 'delivery id')}.parquet"


def ingest_raw(contract: Contract, delivery_id: str, s: Settings | None = None) -> dict:
    """Parse every file of an accepted delivery into the raw long table."""
    s = s or settings()
    rec = landing.get_receipt(delivery_id, tenant=contract.tenant, s=s)
    if rec.status != "accepted":
        raise DatalabError(f"delivery {delivery_id} was {rec.status}; only accepted deliveries are ingested")
    out = raw_path(contract, delivery_id, s)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    schema = {"delivery_id": pl.String(), **long_schema(contract)}
    t0 = time.perf_counter()
    rows = records = 0
    writer: pq.ParquetWriter | None = None
    try:
        for name, path, _sha in landing.stored_files(delivery_id, s):
            reader = TimeseriesReader(contract, path, name, sniff(path, name, contract.layout.delimiter))
            for batch in reader.batches():
                tbl = batch.with_columns(pl.lit(delivery_id).alias("delivery_id")).select(list(schema)).to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(tmp, tbl.schema, compression="zstd")
                writer.write_table(tbl)
                rows += len(batch)
            if reader.problems:
                raise DatalabError(f"delivery {delivery_id}: {'; '.join(reader.problems.reasons()[:5])}")
            records += reader.records
        if writer is None:
            pl.DataFrame(schema=schema).write_parquet(tmp)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    stats = {
        "files": len(rec.files),
        "records": records,
        "rows": rows,
        "bytes_in": rec.bytes,
        "bytes_out": out.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    state.set_stage(delivery_id, "raw", s=s, raw_path=str(out.relative_to(s.home)), stats={"raw": stats})
    return stats
