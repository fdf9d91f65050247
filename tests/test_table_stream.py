"""Which curated files a version takes as they are, and the rewrite of the others (table_stream)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from datalab.store import table_stream
from datalab.store.table_stream import Part

SCHEMA = {"entity": pl.String, "value": pl.Float64, "tenant": pl.String, "contract_id": pl.String, "contract_version": pl.String}


def _curated(path: Path, rows: int, provenance: dict[str, str] | None, row_group: int = 1_000) -> Path:
    df = pl.DataFrame({"entity": [f"m{i % 7}" for i in range(rows)], "value": [float(i) for i in range(rows)]})
    if provenance is not None:
        df = df.with_columns(**{k: pl.lit(v) for k, v in provenance.items()})
    df.write_parquet(path, statistics=True, row_group_size=row_group)
    return path


PROV = {"tenant": "acme", "contract_id": "urn:c", "contract_version": "1.2.0"}


def _part(path: Path, **over: str) -> Part:
    v = {**PROV, **over}
    return Part(path, v["contract_id"], v["tenant"], v["contract_version"], path.stem)


def test_a_curated_file_with_the_versions_schema_and_its_provenance_is_copied(tmp_path: Path) -> None:
    src = _curated(tmp_path / "d1.parquet", 5_000, PROV)
    part = _part(src)
    assert table_stream.is_data_file(part, SCHEMA)
    [out] = table_stream.write_files([part], SCHEMA, tmp_path / "data", rows=1_000)
    assert out.read_bytes() == src.read_bytes()  # not re-encoded, and not sliced by rows


@pytest.mark.parametrize("case", ["no provenance", "other version", "other order", "null tenant"])
def test_any_other_curated_file_is_rewritten_with_the_parts_literals(tmp_path: Path, case: str) -> None:
    path = tmp_path / "d1.parquet"
    if case == "no provenance":  # curated before the provenance columns existed
        _curated(path, 2_500, None)
    elif case == "other version":  # the file says 1.1.0, the receipt 1.2.0
        _curated(path, 2_500, {**PROV, "contract_version": "1.1.0"})
    elif case == "other order":
        _curated(path, 2_500, PROV)
        pl.read_parquet(path).select("value", "entity", *PROV).write_parquet(path, statistics=True, row_group_size=1_000)
    else:  # one row group without a tenant
        df = pl.read_parquet(_curated(path, 2_500, PROV))
        df.with_columns(tenant=pl.when(pl.int_range(pl.len()) < 1_000).then(None).otherwise(pl.col("tenant"))) \
            .write_parquet(path, statistics=True, row_group_size=1_000)
    part = _part(path)
    assert not table_stream.is_data_file(part, SCHEMA)
    outs = table_stream.write_files([part], SCHEMA, tmp_path / "data", rows=1_000)
    assert len(outs) == 3  # 2,500 rows in slices of 1,000
    got = pl.read_parquet(outs)
    assert list(got.schema.items()) == list(SCHEMA.items())
    assert got.select(*PROV).unique().rows() == [tuple(PROV.values())]
    assert got["value"].to_list() == [float(i) for i in range(2_500)]


def test_parts_keep_their_order_whether_copied_or_rewritten(tmp_path: Path) -> None:
    a = _part(_curated(tmp_path / "a.parquet", 1_500, PROV))
    b = _part(_curated(tmp_path / "b.parquet", 1_500, None))
    outs = table_stream.write_files([b, a], SCHEMA, tmp_path / "data", rows=1_000)
    assert len(outs) == 3 and outs[0].read_bytes() == a.path.read_bytes()
    assert pl.read_parquet(outs[1:]).height == 1_500
    # only the new delivery (an append): the copied one is left out
    assert len(table_stream.write_files([a, b], SCHEMA, tmp_path / "data2", only={"b"}, rows=1_000)) == 2


def test_an_empty_curated_file_adds_no_data_file(tmp_path: Path) -> None:
    empty = _part(_curated(tmp_path / "e.parquet", 0, PROV))
    full = _part(_curated(tmp_path / "f.parquet", 10, PROV))
    assert not table_stream.is_data_file(empty, SCHEMA)
    assert len(table_stream.write_files([empty, full], SCHEMA, tmp_path / "data")) == 1
    # a version of empty deliveries only is still one (empty) file with the schema
    [only] = table_stream.write_files([empty], SCHEMA, tmp_path / "data2")
    assert pl.read_parquet(only).height == 0 and list(pl.read_parquet_schema(only).items()) == list(SCHEMA.items())
