"""The published form's copy by renamed dictionary pages (``datalab.parquet_rename``) against the rows written again.

A large delivery's published form is its curated file with the machine ids
and the provenance constants renamed (``engine.Twin``). The copy rewrites
only the dictionary pages (and drops the old names from the data pages'
headers); here it must give the same table, the same statistics and not one
byte of the old names, and anything it does not rewrite must be refused
before a byte is written, the twin then being written the slow way.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datalab import engine, parquet_rename
from datalab.engine import Twin

NAMES = {"BSW-M01": "machine-0001", "BSW-M02": "machine-0002", "a-much-longer-machine-name-07": "m7"}
CONSTANTS = {"tenant": "bavaria-spindle", "contract_id": "urn:datalab:bavaria-spindle:spindle"}
TWIN_CONSTANTS = {"tenant": "firm-a7b1", "contract_id": "urn:datalab:firm-a7b1:spindle"}


def _parts(n: int = 3, rows: int = 40_000, nulls: bool = True) -> list[pa.Table]:
    out = []
    for k in range(n):
        ents = list(NAMES) + ([None] if nulls else [])
        df = pl.DataFrame({
            "entity": [ents[(i // 7 + k) % len(ents)] for i in range(rows)],
            "time": pl.datetime_range(pl.datetime(2026, 1, 5), pl.datetime(2026, 1, 5) + pl.duration(seconds=rows - 1),
                                      "1s", time_zone="UTC", eager=True),
            "sensor": ["spindle_temp" if i % 3 else "vibration" for i in range(rows)],
            "value": [float(i % 97) for i in range(rows)],
        })
        if k == 1 and nulls:  # a part whose machine ids are all missing
            df = df.with_columns(pl.lit(None, pl.String).alias("entity"))
        out.append(df.to_arrow(compat_level=pl.CompatLevel.newest()))
    return out


def _curated(tmp_path: Path, parts: list[pa.Table]) -> Path:
    path = tmp_path / "curated.parquet"
    with engine._PartWriter(path, CONSTANTS) as w:
        for t in parts:
            w.put(t)
    return path


def _twin(tmp_path: Path, name: str) -> Twin:
    return Twin(tmp_path / f"{name}.parquet", TWIN_CONSTANTS, {"entity": NAMES.__getitem__})


def _slow(path: Path, twin: Twin, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The twin written by reading the rows back and encoding them again (the fallback)."""
    with monkeypatch.context() as m:
        m.setattr(parquet_rename, "renamed_copy", lambda *a: (_ for _ in ()).throw(parquet_rename.NotRenamable("test")))
        engine._write_twin(path, twin, set(CONSTANTS))
    twin.tmp.replace(twin.path)
    return twin.path


def _stats(path: Path) -> list[tuple]:
    md = pq.ParquetFile(path).metadata
    out = []
    for i in range(md.num_row_groups):
        for j in range(md.num_columns):
            c = md.row_group(i).column(j)
            s = c.statistics
            out.append((i, c.path_in_schema, c.num_values, s.has_min_max and (s.min, s.max), s.null_count))
    return out


def test_the_renamed_copy_is_the_table_written_again_without_the_old_names(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = _curated(tmp_path, _parts())
    fast = _twin(tmp_path, "fast")
    engine._write_twin(path, fast, set(CONSTANTS))
    fast.tmp.replace(fast.path)
    slow = _slow(path, _twin(tmp_path, "slow"), monkeypatch)
    assert pq.read_table(fast.path).equals(pq.read_table(slow))
    assert pl.read_parquet(fast.path).equals(pl.read_parquet(slow))
    assert _stats(fast.path) == _stats(slow)
    got = pl.read_parquet(fast.path)
    assert set(got["entity"].drop_nulls().unique()) == set(NAMES.values())
    assert got["entity"].null_count() == pl.read_parquet(path)["entity"].null_count() > 0
    assert got["tenant"].unique().to_list() == ["firm-a7b1"]
    data = fast.path.read_bytes()
    for old in (*NAMES, *CONSTANTS.values()):  # not in a dictionary, a statistic or a page header
        assert old.encode() not in data, old
    # the other columns' bytes are the curated file's own
    src = pq.ParquetFile(path).metadata.row_group(0).column(1)
    dst = pq.ParquetFile(fast.path).metadata.row_group(0).column(1)
    assert src.path_in_schema == "time" and src.total_compressed_size == dst.total_compressed_size


def test_the_footer_codec_writes_back_what_it_read(tmp_path: Path) -> None:
    path = _curated(tmp_path, _parts(n=2))
    meta, at = parquet_rename.read_footer(path)
    raw = path.read_bytes()
    assert parquet_rename.encode(meta) == raw[at:-8]


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_each_codec_it_takes(tmp_path: Path, compression: str) -> None:
    t = pa.concat_tables(_parts(n=2, nulls=False))
    t = t.append_column("tenant", pa.array(["bavaria-spindle"] * t.num_rows).dictionary_encode())
    src = tmp_path / "src.parquet"
    pq.write_table(t, src, compression=compression, store_schema=False, row_group_size=30_000)
    dst = tmp_path / "dst.parquet"
    parquet_rename.renamed_copy(src, dst, {"entity": NAMES.__getitem__, "tenant": lambda _v: "firm-x"})
    got = pl.read_parquet(dst)
    want = pl.read_parquet(src).with_columns(pl.col("entity").replace_strict(NAMES), pl.lit("firm-x").alias("tenant"))
    assert got.equals(want)
    assert b"BSW-M" not in dst.read_bytes() and b"bavaria" not in dst.read_bytes()


def _refused(src: Path, dst: Path, rename: dict | None = None) -> str:
    with pytest.raises(parquet_rename.NotRenamable) as e:
        parquet_rename.renamed_copy(src, dst, rename or {"entity": NAMES.__getitem__})
    assert not dst.exists()
    return str(e.value)


def test_what_it_does_not_rewrite_is_refused_before_anything_is_left(tmp_path: Path) -> None:
    t = pa.concat_tables(_parts(n=1, nulls=False))
    dst = tmp_path / "dst.parquet"
    plain = tmp_path / "plain.parquet"  # a machine id column that outgrew its dictionary page
    big = t.set_column(0, "entity", pa.array([f"BSW-M{i:07d}" for i in range(t.num_rows)]))
    pq.write_table(big, plain, dictionary_pagesize_limit=1024, store_schema=False)
    assert "plain values" in _refused(plain, dst, {"entity": lambda v: v + "x"})
    indexed = tmp_path / "indexed.parquet"
    pq.write_table(t, indexed, write_page_index=True, store_schema=False)
    assert "page index" in _refused(indexed, dst)
    snappy = tmp_path / "snappy.parquet"
    pq.write_table(t, snappy, compression="snappy", store_schema=False)
    assert "codec" in _refused(snappy, dst)
    nodict = tmp_path / "nodict.parquet"
    pq.write_table(t, nodict, use_dictionary=False, store_schema=False)
    assert "dictionary" in _refused(nodict, dst)
    good = tmp_path / "good.parquet"
    pq.write_table(t, good, store_schema=False)
    assert "no column machine" in _refused(good, dst, {"machine": str.upper})
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])
    assert "footer" in _refused(cut, dst)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1" + b"\xff" * 64 + (40).to_bytes(4, "little") + b"PAR1")
    _refused(junk, dst)
    # a footer cut short, or its bytes flipped: refused, never another error
    raw = good.read_bytes()
    n = int.from_bytes(raw[-8:-4], "little")
    footer_at = len(raw) - 8 - n
    for k, damage in enumerate((lambda f: f[: len(f) // 2], lambda f: bytes(b ^ 0x5A for b in f),
                                lambda f: f[:10] + b"\x0c" * (len(f) - 10))):
        bad = tmp_path / f"bad{k}.parquet"
        footer = damage(raw[footer_at:-8])
        bad.write_bytes(raw[:footer_at] + footer + len(footer).to_bytes(4, "little") + b"PAR1")
        _refused(bad, dst)


def test_a_file_it_refuses_still_gets_its_twin_the_slow_way(tmp_path: Path) -> None:
    parts = _parts(n=2, nulls=False)
    path = tmp_path / "curated.parquet"
    pq.write_table(pa.concat_tables(parts).append_column("tenant", pa.array([CONSTANTS["tenant"]] * 80_000))
                   .append_column("contract_id", pa.array([CONSTANTS["contract_id"]] * 80_000)),
                   path, use_dictionary=False, store_schema=False)  # no dictionaries: not renamable
    twin = _twin(tmp_path, "twin")
    engine._write_twin(path, twin, set(CONSTANTS))
    got = pl.read_parquet(twin.tmp)
    assert got["entity"].unique().sort().to_list() == sorted(set(NAMES.values()))
    assert got["tenant"].unique().to_list() == ["firm-a7b1"] and got.height == 80_000


def test_a_large_delivery_gets_its_published_form_by_renaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine.sink_parquet_parts: the twin of a delivery curated in parts is the renamed copy, not a second encoding."""
    used: list[Path] = []
    real = parquet_rename.renamed_copy
    monkeypatch.setattr(parquet_rename, "renamed_copy", lambda src, dst, ren: used.append(dst) or real(src, dst, ren))
    plans = [pl.from_arrow(t).lazy() for t in _parts()]
    twin = _twin(tmp_path, "twin")
    engine.Engine("cpu").sink_parquet_parts(plans, tmp_path / "out.parquet", CONSTANTS, twin=twin)
    assert used == [twin.tmp] and twin.path.exists() and not twin.tmp.exists()
    want = pl.read_parquet(tmp_path / "out.parquet").with_columns(
        pl.col("entity").replace_strict(NAMES, default=None), *(pl.lit(v).alias(k) for k, v in TWIN_CONSTANTS.items()))
    assert pl.read_parquet(twin.path).equals(want)
