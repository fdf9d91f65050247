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


class RawWriter:
    """Writes a delivery's parsed batches to its raw Parquet file, atomically.

    The push check parses every row anyway; it hands its batches to a
    ``RawWriter`` so an accepted delivery's raw table exists the moment its
    receipt does and ingest need not parse the files a second time. Nothing
    is visible under the final name until ``commit``; ``abort`` leaves no file.
    """

    def __init__(self, contract: Contract, delivery_id: str, s: Settings):
        self.delivery_id = delivery_id
        self.path = raw_path(contract, delivery_id, s)
        self.tmp = self.path.with_suffix(".parquet.tmp")
        self.schema = {"delivery_id": pl.String(), **long_schema(contract)}
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pl.DataFrame) -> None:
        tbl = batch.with_columns(pl.lit(self.delivery_id).alias("delivery_id")).select(list(self.schema)).to_arrow()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, tbl.schema, compression="zstd")
        self._writer.write_table(tbl)
        self.rows += len(batch)

    def commit(self) -> Path:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(schema=self.schema).write_parquet(self.tmp)
        else:
            self._writer.close()
            self._writer = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def _parse(contract: Contract, delivery_id: str, s: Settings) -> tuple[int, int]:
    """Parse the stored files again into the raw table; (rows, records)."""
    out = RawWriter(contract, delivery_id, s)
    records = 0
    try:
        for name, path, _sha in landing.stored_files(delivery_id, s):
            reader = TimeseriesReader(contract, path, name, sniff(path, name, contract.layout.delimiter))
            for batch in reader.batches():
                out.write(batch)
            if reader.problems:
                raise DatalabError(f"delivery {delivery_id}: {'; '.join(reader.problems.reasons()[:5])}")
            records += reader.records
    except BaseException:
        out.abort()
        raise
    out.commit()
    return out.rows, records


def ingest_raw(contract: Contract, delivery_id: str, s: Settings | None = None, reparse: bool = False) -> dict:
    """The raw long table of an accepted delivery.

    The push check already wrote it (one parse per delivery); ``reparse``
    parses the stored files again, e.g. for deliveries landed before that.
    """
    s = s or settings()
    rec = landing.get_receipt(delivery_id, tenant=contract.tenant, s=s)
    if rec.status != "accepted":
        raise DatalabError(f"delivery {delivery_id} was {rec.status}; only accepted deliveries are ingested")
    out = raw_path(contract, delivery_id, s)
    t0 = time.perf_counter()
    if out.exists() and not reparse:
        # Written by the push check (RawWriter.commit): the same parse, kept.
        rows, records, parsed_at = pq.ParquetFile(out).metadata.num_rows, rec.rows, "push"
    else:
        rows, records, parsed_at = *_parse(contract, delivery_id, s), "ingest"
    stats = {
        "files": len(rec.files),
        "parsed_at": parsed_at,
        "records": records,
        "rows": rows,
        "bytes_in": rec.bytes,
        "bytes_out": out.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    state.set_stage(delivery_id, "raw", s=s, raw_path=str(out.relative_to(s.home)), stats={"raw": stats})
    return stats
