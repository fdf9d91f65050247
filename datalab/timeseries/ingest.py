"""Raw ingest: a delivery's stored files, parsed with the contract's types, into one Parquet file.

Runs the same streaming reader as the push check, batch by batch, into a
pyarrow ParquetWriter, so memory stays bounded by one batch whatever the
delivery's size. Output: ``raw/<tenant>/<product>/<delivery_id>.parquet``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datalab.config import Settings, safe_segment, settings
from datalab.contracts.contract import Contract
from datalab.contracts.raw_table import KEY
from datalab.engine import one_value_column
from datalab.errors import DatalabError
from datalab.intake import receipts
from datalab.intake.formats import sniff
from datalab.store import state
from datalab.store.storage import store
from datalab.timeseries.readers import TimeseriesReader, long_schema


def raw_path(contract: Contract, delivery_id: str, s: Settings) -> Path:
    return s.raw / contract.tenant / contract.product / f"{safe_segment(delivery_id, 'delivery id')}.parquet"


# The raw table's series columns: its row groups hold one series each where they can (RawWriter),
# grouped by a hash of the two into this many numbers (a prime, under int16's range).
SERIES = ("sensor", "entity")
SERIES_BUCKETS = 32749
# The raw file's footer says so (key-value metadata) when most of its rows are in row groups of
# one series each: curation then cuts it into more buckets, each reading only its own row groups.
BY_SERIES_KEY = "datalab.raw_row_groups"
BY_SERIES_SHARE = 0.9


def written_by_series(path: Path) -> bool:
    """Whether the raw file at ``path`` holds most rows in row groups of one series (``RawWriter``'s footer mark)."""
    try:
        meta = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowException):  # not Parquet at all: the scan that follows says so, with the file's name
        return False
    return meta.get(BY_SERIES_KEY.encode()) == b"series"


def series_groups(df: pl.DataFrame, min_rows: int) -> tuple[list[tuple[pl.DataFrame, tuple[str, str] | None]], int]:
    """``df`` cut into row groups: one per series of at least ``min_rows`` rows, the other rows together, last.

    Returns the groups and how many rows are in groups of several series.
    A group of one series comes with its (sensor, entity) and without those
    two columns (they are one value: ``RawWriter`` writes them as such, so
    they are neither gathered nor hashed again); any other group comes
    with its key None and every column.

    Rows are grouped by a hash of their (sensor, entity) into
    ``SERIES_BUCKETS`` numbers, sorted by those with a stable radix sort
    and gathered once: a series keeps its rows' order (delivery order), and
    so do the rows of the mixed group, which is all curation's order needs
    (duplicates of a reading share its series). Two series whose numbers
    meet share a row group (their 64-bit hashes differ within it: it is
    written as a mixed one); its statistics then span both, which only makes
    them prune less. Exact groups (``partition_by``, or dictionary codes)
    cost two to three times as much, on the push's writer thread.
    """
    import numpy as np

    if df.height < min_rows:
        return ([(df, None)] if df.height else []), df.height
    df = df.rechunk()  # a gather from one chunk is several times faster (no copy if it is one already)
    full = df.select(pl.col(SERIES[0]).hash(seed=0) ^ pl.col(SERIES[1]).hash(seed=1)).to_series().to_numpy()
    bucket = (full % SERIES_BUCKETS).astype(np.int16)
    sizes = np.bincount(bucket, minlength=SERIES_BUCKETS)
    big = np.flatnonzero(sizes >= min_rows)
    if not len(big):
        return [(df, None)], df.height
    rank = np.full(SERIES_BUCKETS, len(big), np.int16)
    rank[big] = np.arange(len(big), dtype=np.int16)
    group = rank[bucket]
    order = np.argsort(group, kind="stable")  # int16: a radix sort
    counts = np.bincount(group, minlength=len(big) + 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    hashes = full[order]
    keys = df.select(SERIES)
    rest = df.drop(SERIES)[pl.Series(order, dtype=pl.Int64)]
    out: list[tuple[pl.DataFrame, tuple[str, str] | None]] = []
    mixed = 0
    for k, (at, n) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
        if not n:
            continue
        first = int(order[at])
        key = (keys.item(first, SERIES[0]), keys.item(first, SERIES[1]))
        if k < len(big) and None not in key and hashes[at:at + n].min() == hashes[at:at + n].max():
            out.append((rest.slice(at, n), key))
        else:  # the rows of several series (or without a name): every column
            out.append((rest.slice(at, n).with_columns(keys[pl.Series(order[at:at + n], dtype=pl.Int64)]), None))
            mixed += n
    return out, mixed


def _row_group_table(part: pl.DataFrame, key: tuple[str, str] | None, names: list[str]) -> pa.Table:
    """One row group as Arrow, its columns in the file's order (``names``) and its series columns text dictionaries.

    Arrow string views, as Polars holds them: no copy into large strings (a
    measurable part of the push). A group of one series gets ``sensor`` and
    ``entity`` as dictionaries of one value (nothing to hash, statistics
    from the one value); a mixed group its own dictionaries of them. Either
    way the file holds the same dictionary-encoded text, and its readers
    see plain text (the file is written without the Arrow schema).
    """
    tbl = part.to_arrow(compat_level=pl.CompatLevel.newest())
    n = tbl.num_rows
    cols = {}
    for i, name in enumerate(SERIES):
        if key is not None:
            cols[name] = one_value_column(key[i], n, "int32")
        else:
            import pyarrow.compute as pc  # (28 ms to import, once)

            enc = pc.dictionary_encode(tbl.column(name)).combine_chunks()
            cols[name] = pa.DictionaryArray.from_arrays(enc.indices, enc.dictionary.cast(pa.large_string()))
    return pa.table({c: cols[c] if c in cols else tbl.column(c) for c in names})


class RawWriter:
    """Writes a delivery's parsed batches to its raw Parquet file, atomically, its row groups one series each.

    The push check parses every row anyway; it hands its batches to a
    ``RawWriter`` so an accepted delivery's raw table exists the moment its
    receipt does and ingest need not parse the files a second time. Nothing
    is visible under the final name until ``commit``; ``abort`` leaves no file.

    The batches go to a writer thread, which gathers ``GROUP_ROWS`` rows,
    cuts them by series (``series_groups``) and encodes each series' rows
    as a row group of its own, while the reader parses the next batches
    (Polars and pyarrow release the GIL). Curation reads the raw table once
    per bucket of series, by name: with one series per row group and
    min/max statistics on ``sensor`` and ``entity``, Polars skips the row
    groups of the other series instead of decoding and comparing every row
    of the file for every bucket. Rows keep their delivery order within
    their series, which is all curation's order needs (a reading's
    duplicates share its series). The queue holds at most ``QUEUE``
    batches, so memory stays bounded by those and one group of rows.

    Only the text columns are dictionary-encoded (they repeat; numbers and
    timestamps do not): faster, and smaller. The measurements are in
    docs/performance.md ("Why the code is as it is").
    """

    QUEUE = 4
    # Rows the writer thread gathers before cutting them by series, and the
    # least rows a series needs there for a row group of its own.
    GROUP_ROWS = 1 << 17
    SERIES_GROUP_MIN = 1 << 12
    # Up to this many rows the key columns of the batches are kept (``keys``): the push counts
    # duplicate keys on them in memory rather than reading them back from the file.
    KEYS_KEPT_ROWS = 1_000_000

    def __init__(self, contract: Contract, delivery_id: str, s: Settings):
        self.delivery_id = delivery_id
        self.path = raw_path(contract, delivery_id, s)
        self.tmp = self.path.with_suffix(".parquet.tmp")
        self.schema = {"delivery_id": pl.String(), **long_schema(contract)}
        self.rows = 0
        self.records = 0  # source records (set by the caller that parses them)
        self._writer: pq.ParquetWriter | None = None
        self._queue: queue.Queue[pl.DataFrame | None] = queue.Queue(maxsize=self.QUEUE)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._keys: list[pl.DataFrame] | None = []
        self._mixed_rows = 0  # rows written in row groups of several series (the writer thread's count)

    @property
    def keys(self) -> pl.DataFrame | None:
        """Every row's (entity, time, sensor) as written, or None past ``KEYS_KEPT_ROWS`` rows."""
        if self._keys is None:
            return None
        return pl.concat(self._keys) if self._keys else pl.DataFrame(schema={k: self.schema[k] for k in KEY})

    def write(self, batch: pl.DataFrame) -> None:
        self._raise()
        if self._thread is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._drain, name=f"raw-writer-{self.delivery_id}", daemon=True)
            self._thread.start()
        self._queue.put(batch.select([c for c in self.schema if c != "delivery_id"]))
        self.rows += len(batch)
        if self._keys is not None and self.rows <= self.KEYS_KEPT_ROWS:
            self._keys.append(batch.select(KEY))
        else:
            self._keys = None

    def _drain(self) -> None:
        """The writer thread: gathers batches, writes them by series; an error is kept for the caller."""
        pending: list[pl.DataFrame] = []
        rows = 0
        while (batch := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drained, so that write() never blocks
            try:
                if pending and batch.schema != pending[0].schema:
                    raise ValueError(f"raw table of {self.delivery_id}: a batch's schema {dict(batch.schema)} "
                                     f"differs from the file's {dict(pending[0].schema)}")
                pending.append(batch)
                rows += len(batch)
                if rows >= self.GROUP_ROWS:
                    self._write_groups(pending)
                    rows = 0
            except BaseException as e:  # handed to the caller on its next call
                self._error = e
        if pending and self._error is None:
            try:
                self._write_groups(pending)
            except BaseException as e:
                self._error = e

    def _write_groups(self, pending: list[pl.DataFrame]) -> None:
        """Write the ``pending`` batches (emptied here: their memory goes as soon as they are one frame) by series."""
        df = pl.concat(pending, rechunk=True)  # a gather from one chunk is several times faster
        pending.clear()
        names = df.columns
        parts, mixed = series_groups(df, self.SERIES_GROUP_MIN)
        self._mixed_rows += mixed
        del df  # the parts are slices of the rows in their new order
        for part, key in parts:
            tbl = _row_group_table(part, key, names)
            # The delivery id, the same on every row, goes in as a dictionary of one value: as a
            # text column the writer hashed every row to find that one value again (a quarter of
            # writing 240,000 C-MAPSS readings). The file holds the same dictionary-encoded text.
            tbl = tbl.add_column(0, "delivery_id", one_value_column(self.delivery_id, tbl.num_rows))
            if self._writer is None:
                self._writer = self._open(tbl.schema)
            self._writer.write_table(tbl, row_group_size=max(1, tbl.num_rows))

    def _open(self, schema: pa.Schema) -> pq.ParquetWriter:
        text = [n for n, t in self.schema.items() if t == pl.String()]
        # Min/max statistics for the series columns only among the text
        # columns: they let a reader of some series skip the others' row
        # groups. For the other text columns they would prune nothing while
        # computing them took a good part of the writer's CPU. Time and value keep theirs.
        # LZ4, not zstd: curation reads the raw table once per bucket
        # (and once for its series), and LZ4 decodes faster: curation is
        # faster and the writer spends less CPU, for a larger file
        # (uncompressed is larger still, and no faster to curate). The
        # measurements are in docs/performance.md ("Why the code is as it is").
        # Times (and integer readings) as deltas: a few bits a row where
        # the deliveries' times mostly rise, instead of 8 bytes LZ4 can
        # hardly shrink; the file is smaller and curation reads it faster.
        delta = {n: "DELTA_BINARY_PACKED" for n, t in self.schema.items() if t.is_temporal() or t.is_integer()}
        return pq.ParquetWriter(self.tmp, schema, compression="lz4", use_dictionary=text, store_schema=False,
                                write_statistics=[n for n in self.schema if n not in text or n in SERIES],
                                column_encoding=delta)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def commit(self) -> Path:
        self._stop()
        self._raise()
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(schema=self.schema).write_parquet(self.tmp)
        else:
            if self.rows and self._mixed_rows <= (1 - BY_SERIES_SHARE) * self.rows:
                self._writer.add_key_value_metadata({BY_SERIES_KEY: "series"})
            self._writer.close()
            self._writer = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._stop()
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file is deleted anyway
                self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def _parse(contract: Contract, delivery_id: str, s: Settings) -> tuple[int, int]:
    """Parse the stored files again into the raw table; (rows, records)."""
    files = receipts.stored_files(delivery_id, s)
    with store(s).fetched(*(p for _n, p, _sha in files)) as here:
        out = _parse_files(contract, delivery_id, [(n, p, sha) for (n, _p, sha), p in zip(files, here, strict=True)], s)
    store(s).save(out.path)  # an object store holds it now (nothing to do for a local one)
    return out.rows, out.records


def _parse_files(contract: Contract, delivery_id: str, files: list[tuple[str, Path, str]], s: Settings) -> RawWriter:
    """The stored files (on this machine) parsed into a committed raw table; its writer."""
    out = RawWriter(contract, delivery_id, s)
    side, side_at = None, {}
    if contract.layout.measurement is not None and contract.layout.measurement.side_files:
        # side files are joined to the data files, not read as data
        from datalab.intake.measurement.sidefiles import split_side

        side, side_at, _ = split_side(contract, [(n, p, sha, 0, False) for n, p, sha in files])
    try:
        for i, (name, path, _sha) in enumerate(files):
            if i in side_at:
                continue
            reader = TimeseriesReader(contract, path, name, sniff(path, name, contract.layout.delimiter))
            reader.side = side
            for batch in reader.batches():
                out.write(batch)
            if reader.problems:
                raise DatalabError(f"delivery {delivery_id}: {'; '.join(reader.problems.reasons()[:5])}")
            out.records += reader.records
    except BaseException:
        out.abort()
        raise
    out.commit()
    return out


def ingest_raw(contract: Contract, delivery_id: str, s: Settings | None = None, reparse: bool = False) -> dict:
    """The raw long table of an accepted delivery.

    The push check already wrote it (one parse per delivery); ``reparse``
    parses the stored files again, e.g. for deliveries landed before that.
    """
    s = s or settings()
    rec = receipts.get_receipt(delivery_id, tenant=contract.tenant, s=s)
    if rec.status != "accepted":
        raise DatalabError(f"delivery {delivery_id} was {rec.status}; only accepted deliveries are ingested")
    out = raw_path(contract, delivery_id, s)
    st = store(s)
    t0 = time.perf_counter()
    if st.exists(out) and not reparse:
        # Written by the push check (RawWriter.commit): the same parse, kept.
        rows, records, parsed_at = st.parquet_rows(out), rec.rows, "push"
    else:
        rows, records, parsed_at = *_parse(contract, delivery_id, s), "ingest"
    stats = {
        "files": len(rec.files),
        "parsed_at": parsed_at,
        "records": records,
        "rows": rows,
        "bytes_in": rec.bytes,
        "bytes_out": st.size(out),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    state.set_stage(delivery_id, "raw", s=s, raw_path=st.key(out), stats={"raw": stats})
    return stats
