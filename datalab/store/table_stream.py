"""The data files of a dataset version, written by Polars and registered with Iceberg.

A version's rows are its curated deliveries, each conformed to the version's
schema (columns that one contract lacks are null, types unified) and given
the literal columns publishing adds (tenant, contract, contract version).
The order is deterministic: deliveries by (contract, delivery id), each in
its curated order (sensor, entity, time).

The files are written here, by Polars' streaming Parquet sink, and then
added to the Iceberg table (``add_files``), rather than handed to pyiceberg's
writer as Arrow batches. pyiceberg encodes each file on one thread after
draining its input into memory; its write took most of a publish, where
the sink and the registration (which reads the files' footers for
Iceberg's column metrics) take a small part of that (the measurements are
in docs/performance.md, "Why the code is as it is").

A curated file that already is a data file of the version (the version's
schema, in its order, and provenance columns holding this part's literals:
``raw_table.PROVENANCE``) is not rewritten but copied byte for byte into the
table's data folder. Re-encoding was a good part of a publish; the copy
costs next to nothing (``shutil.copyfile``: the kernel copies, by
``sendfile``, without the bytes passing through Python). A copy rather
than a hard link: the version's files stay independent of the curated
store, so damage to one (or retention removing one) never reaches the
other, and disk use is what it was with rewritten files. Any other part (a
curated file from before the provenance columns, a dataset of contracts
with different columns, dropped columns) is rewritten by the sink.

A firm that withholds its name (``datalab.policy.firm_names``) has its rows
carry its pseudonyms in ``tenant``, ``contract_id`` and ``entity``, where
the curated file holds the names: such a part is its published form
(written by curation, ``curate.PublishedForm``; then it is copied like any
data file) or, where there is none under the current mask, rewritten.

Memory stays bounded: a rewritten file holds at most ``COMMIT_ROWS`` rows and
the sink streams it; a copied file is the curated file, whose row groups
bound a reader's memory. The files carry no Iceberg field ids; ``add_files``
records the table's name mapping (``schema.name-mapping.default``), which pyiceberg,
Spark and Trino use to read such files, and schema updates keep it current.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datalab.contracts.raw_table import KEY as REPLACE_KEY
from datalab.contracts.raw_table import PROVENANCE

# Rows per data file. Each file is streamed by the sink, so this bounds the
# file size (the size it gives is in docs/performance.md, "Why the code is
# as it is"), not memory.
COMMIT_ROWS = 2_000_000


@dataclass(frozen=True)
class Part:
    """One curated delivery file and the literal columns publishing adds to it."""

    path: Path
    contract_id: str
    tenant: str
    contract_version: str
    delivery_id: str
    # Curated files of later corrections whose readings replace some of this
    # part's (same entity, time, sensor): those rows are left out (issue 23).
    replaced_by: tuple[Path, ...] = ()
    # Machine ids the version's rows carry pseudonymised, (id, pseudonym): a firm
    # that withholds its name (datalab.policy.firm_names.row_mask; ``tenant`` and
    # ``contract_id`` above are then its pseudonyms already).
    entities: tuple[tuple[str, str], ...] = ()

    def rows(self) -> pl.LazyFrame:
        """The part's curated rows, less those a later correction replaces."""
        lf = pl.scan_parquet(self.path)
        if not self.replaced_by:
            return lf
        keys = pl.concat([pl.scan_parquet(p).select(REPLACE_KEY) for p in self.replaced_by]).unique()
        return lf.join(keys, on=REPLACE_KEY, how="anti", maintain_order="left")

    @property
    def literals(self) -> dict[str, str]:
        """The columns publishing adds to every row (the curated file's last columns) and their values."""
        return dict(zip(PROVENANCE, (self.tenant, self.contract_id, self.contract_version), strict=True))


def conformed(part: Part, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """The rows of one curated delivery in the version's schema (a lazy scan)."""
    lf = part.rows().with_columns(**{k: pl.lit(v) for k, v in part.literals.items()})
    if part.entities:
        lf = lf.with_columns(pl.col("entity").replace(dict(part.entities)))
    have = lf.collect_schema()
    return lf.select([pl.col(n).cast(t) if n in have else pl.lit(None, t).alias(n) for n, t in schema.items()])


def is_data_file(part: Part, schema: dict[str, pl.DataType]) -> bool:
    """Whether the curated file of ``part`` can serve as a data file of the version unchanged.

    Its schema must be the version's, column for column in the same order,
    and every row group's statistics must show the provenance columns
    holding exactly this part's literals (no nulls, min = max = the value).
    Read from the Parquet footer only.
    """
    if part.replaced_by or part.entities or list(pl.read_parquet_schema(part.path).items()) != list(schema.items()):
        return False
    meta = pq.ParquetFile(part.path).metadata
    if meta.num_rows == 0:  # no rows to add: left to slices(), which writes none for it
        return False
    names = meta.schema.to_arrow_schema().names
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for col, value in part.literals.items():
            st = rg.column(names.index(col)).statistics
            if st is None or not st.has_min_max or st.null_count != 0 or st.min != value or st.max != value:
                return False
    return True


def slices(parts: list[Part], schema: dict[str, pl.DataType], only: set[str] | None = None,
           rows: int | None = None) -> Iterator[pl.LazyFrame | Path]:
    """The version's rows in order: a curated file's path where it is a data file
    as it is (:func:`is_data_file`), else consecutive lazy slices of at most
    ``rows`` rows; at least one item."""
    rows = rows or COMMIT_ROWS
    any_rows = False
    for part in sorted(parts, key=lambda p: (p.contract_id, p.delivery_id)):
        if only is not None and part.delivery_id not in only:
            continue
        if is_data_file(part, schema):
            any_rows = True
            yield part.path
            continue
        n = part.rows().select(pl.len()).collect().item()  # from the footer, unless a correction replaces rows
        lf = conformed(part, schema)
        for offset in range(0, n, rows):
            any_rows = True
            yield lf.slice(offset, rows)
    if not any_rows:  # an empty version is still a version: one empty file with the schema
        yield pl.LazyFrame(schema=schema)


def write_files(parts: list[Part], schema: dict[str, pl.DataType], data_dir: Path, only: set[str] | None = None,
                rows: int | None = None) -> list[Path]:
    """Write the version's data files into ``data_dir``; their paths, in row order.

    On any error the files written so far are removed: nothing refers to
    them yet, and a retried publish writes its own.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    write = uuid.uuid4()
    out: list[Path] = []
    try:
        for k, item in enumerate(slices(parts, schema, only, rows)):
            path = data_dir / f"{k:05d}-{write}.parquet"
            out.append(path)
            if isinstance(item, Path):
                shutil.copyfile(item, path)
            else:
                item.sink_parquet(path, compression="zstd", statistics=True)
    except BaseException:
        for p in out:
            p.unlink(missing_ok=True)
        raise
    return out


def arrow_schema(schema: dict[str, pl.DataType]) -> pa.Schema:
    """The Arrow schema of the Iceberg table, as Polars converts the version's schema."""
    return pl.DataFrame(schema=schema).to_arrow().schema
