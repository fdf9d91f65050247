"""Tests of the synthetic delivery generator (datalab.timeseries.sample).

The curation's tests rely on ``Generated.truth`` being exact, so these
tests recount every defect from the frame itself, independently of how the
generator chose them, and check that a delivery is reproducible byte for
byte.
"""

from __future__ import annotations

import functools
import gzip
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from datalab.contracts import contract, units
from datalab.contracts.contract import Contract
from datalab.timeseries.sample import (
    DEFAULT_START,
    GAP_MIN,
    Defects,
    Generated,
    cli_generate,
    format_of,
    generate,
    write,
)

CONTRACTS = Path(__file__).resolve().parents[1] / "data_contracts"
BAVARIA = "urn:datalab:bavaria-spindle:spindle-telemetry"
LYON = "urn:datalab:lyon-presses:press-line"
OULU = "urn:datalab:oulu-pumps:pump-telemetry"
CMAPSS = "urn:datalab:open-benchmarks:cmapss-fd001"
LONG = [BAVARIA, LYON]


@functools.cache
def load_contracts() -> dict[str, Contract]:
    return contract.load_all(CONTRACTS)


@pytest.fixture(scope="module")
def contracts() -> dict[str, Contract]:
    return load_contracts()


def utc_instants(frame: pl.DataFrame, column: str, zone: str) -> pl.Series:
    """Every representation the generator writes (Z, +hh:mm, naive local) as a UTC instant."""
    ts = pl.col(column)
    aware = ts.str.replace(r"Z$", "+00:00").str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%:z", time_zone="UTC", strict=False
    )
    naive = (
        ts.str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False)
        .dt.replace_time_zone(zone)
        .dt.convert_time_zone("UTC")
    )
    out = frame.select(
        pl.when(ts.str.contains(r"(Z|[+-]\d\d:\d\d)$")).then(aware).otherwise(naive).alias("utc")
    ).to_series()
    assert out.null_count() == 0, "a timestamp did not parse"
    return out


def python_instant(text: str, zone: str) -> datetime:
    """Independent check of one timestamp with the standard library."""
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=ZoneInfo(zone))).astimezone(UTC)


def canonical_units(c: Contract) -> dict[str, str]:
    return {m.source_name: m.unit or "" for m in c.measurements}


def check_long_truth(c: Contract, gen: Generated, rows: int) -> None:
    """Recount every defect of a long delivery from the frame and compare with the truth."""
    f, truth = gen.frame, gen.truth
    ent, tcol = c.entity.source_name, c.time.source_name
    sensor, value, unit = c.layout.sensor_column, c.layout.value_column, c.layout.unit_column
    assert unit is not None
    assert f.columns[:5] == [ent, tcol, sensor, value, unit]
    assert f.columns[5:] == [a.source_name for a in c.attributes]

    assert truth["rows"] == f.height
    assert f.height == (
        rows
        - truth["gap_rows"]
        + truth["exact_duplicates"]
        + truth["key_duplicates"]
        + truth["late"]
    )
    assert truth["sensors"] == len(c.measurements)
    if rows >= truth["entities"] * truth["sensors"]:
        assert truth["entities"] == f[ent].n_unique()
        assert set(f[sensor].unique()) == {m.source_name for m in c.measurements}
    assert f[ent].str.contains(c.entity.pattern).all()
    for a in c.attributes:
        if a.pattern:
            assert f[a.source_name].str.contains(a.pattern).all()

    # wrong units: a unit of the same dimension, understood by units.canonical
    canon = pl.DataFrame(
        {sensor: list(canonical_units(c)), "_canon": list(canonical_units(c).values())}
    )
    g = f.join(canon, on=sensor, how="left", maintain_order="left")
    wrong = g.filter(pl.col(unit) != pl.col("_canon"))
    assert wrong.height == truth["wrong_unit"]
    for raw, target in wrong.select(unit, "_canon").unique().iter_rows():
        assert units.canonical(raw) not in (None, target)
        assert units.conversion(raw, target) is not None

    # missing values and spikes are disjoint from each other and from wrong units
    assert f[value].null_count() == truth["missing"]
    assert wrong[value].null_count() == 0
    bounds = pl.DataFrame(
        {
            sensor: [m.source_name for m in c.measurements],
            "_lo": [float(m.minimum) for m in c.measurements],
            "_hi": [float(m.maximum) for m in c.measurements],
        }
    )
    g = g.join(bounds, on=sensor, how="left", maintain_order="left")
    out_of_range = g.filter(
        (pl.col(unit) == pl.col("_canon"))
        & ((pl.col(value) < pl.col("_lo")) | (pl.col(value) > pl.col("_hi")))
    )
    assert out_of_range.height == truth["spikes"]
    # a spike is clearly out of range: several ranges above the maximum
    assert (
        out_of_range[value] > out_of_range["_hi"] + (out_of_range["_hi"] - out_of_range["_lo"])
    ).all()

    # exact duplicates come in pairs; key duplicates share the key, not the value
    assert f.is_duplicated().sum() == 2 * truth["exact_duplicates"]
    assert f.height - f.unique().height == truth["exact_duplicates"]
    key = [ent, tcol, sensor]
    assert f.height - f.unique(subset=key).height == (
        truth["exact_duplicates"] + truth["key_duplicates"]
    )
    both = f.unique().filter(pl.struct(key).is_duplicated())
    assert both.height == 2 * truth["key_duplicates"]
    if truth["key_duplicates"]:
        assert both[value].null_count() == 0
        assert both[unit].is_in(list(canonical_units(c).values())).all()

    # timestamps: tz-shifted rows are the ones not written in UTC with Z
    assert (~f[tcol].str.ends_with("Z")).sum() == truth["tz_shifted"]
    utc = utc_instants(f, tcol, c.layout.timezone)
    assert (utc < DEFAULT_START).sum() == truth["late"]
    if truth["late"]:
        assert (utc.tail(truth["late"]) < DEFAULT_START).all()

    # gaps: per series, runs of >= GAP_MIN missing steps, the same after the
    # curation drops empty and out-of-range readings
    # curation (wrong units are converted, so they stay)
    spike = (pl.col(unit) == pl.col("_canon")) & ~pl.col(value).is_between("_lo", "_hi")
    clean = g.with_columns(utc.alias("_utc")).filter(pl.col(value).is_not_null() & ~spike)
    for frame in (g.with_columns(utc.alias("_utc")), clean):
        deltas = (
            frame.select(ent, sensor, "_utc")
            .unique()
            .sort(ent, sensor, "_utc")
            .with_columns(d=pl.col("_utc").diff().over(ent, sensor))
        )
        big = deltas.filter(pl.col("d") > timedelta(seconds=3))
        assert big.height == truth["gaps"]
        assert (big["d"] >= timedelta(seconds=GAP_MIN + 1)).all()


# --------------------------------------------------------------------------
# long layout


@pytest.mark.parametrize("cid", LONG)
def test_truth_matches_frame_long(contracts: dict[str, Contract], cid: str) -> None:
    c = contracts[cid]
    d = Defects(
        exact_duplicates=0.02,
        key_duplicates=0.01,
        wrong_unit=0.02,
        missing=0.01,
        spikes=0.005,
        tz_shift=0.05,
        late=7,
    )
    gen = generate(c, 20_000, seed=5, defects=d)
    n = 20_000 - gen.truth["gap_rows"]
    for name, share in [
        ("exact_duplicates", 0.02),
        ("key_duplicates", 0.01),
        ("wrong_unit", 0.02),
        ("missing", 0.01),
        ("spikes", 0.005),
        ("tz_shifted", 0.05),
    ]:
        assert gen.truth[name] == int(share * n + 0.5), name
    assert gen.truth["gaps"] == 2 * gen.truth["entities"] * gen.truth["sensors"]
    assert gen.truth["late"] == 7
    check_long_truth(c, gen, 20_000)


def test_default_defects_and_shuffle(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    gen = generate(c, 10_000, seed=1)
    check_long_truth(c, gen, 10_000)
    utc = utc_instants(gen.frame, "ts", c.layout.timezone)
    assert not utc.is_sorted(), "shuffle=True must deliver rows out of time order"
    assert {x for x in gen.frame["machine_id"].unique()} == {"BSW-M01", "BSW-M02", "BSW-M03"}


def test_clean_delivery(contracts: dict[str, Contract]) -> None:
    c = contracts[LYON]
    gen = generate(c, 9_000, seed=2, entities=5, defects=Defects.none())
    f = gen.frame
    assert f.height == 9_000
    assert {
        k: v for k, v in gen.truth.items() if k not in ("rows", "entities", "sensors")
    } == dict.fromkeys(
        [
            "exact_duplicates",
            "key_duplicates",
            "wrong_unit",
            "missing",
            "spikes",
            "gaps",
            "gap_rows",
            "late",
            "tz_shifted",
        ],
        0,
    )
    assert f.null_count().sum_horizontal().item() == 0
    assert f.select(pl.struct("press_id", "ts", "sensor").is_duplicated().any()).item() is False
    assert f["ts"].str.ends_with("Z").all()
    assert f["ts"].is_sorted()
    assert set(f["press_id"]) == {"LP-A1", "LP-A2", "LP-A3", "LP-A4", "LP-A5"}
    units_by_sensor = canonical_units(c)
    for (sensor, unit), part in f.group_by("sensor", "unit"):
        assert unit == units_by_sensor[sensor]
        m = c.column(sensor)
        assert part["value"].min() >= m.minimum and part["value"].max() <= m.maximum
    # every series has one reading per expected step, no more, no less
    steps = f.with_columns(t=utc_instants(f, "ts", c.layout.timezone)).with_columns(
        d=pl.col("t").diff().over("press_id", "sensor")
    )
    assert steps["d"].drop_nulls().unique().to_list() == [timedelta(seconds=1)]
    # several operator badges per press, as shifts change
    assert (
        f.group_by("press_id").agg(pl.col("operator_badge").n_unique())["operator_badge"].min() >= 3
    )
    check_long_truth(c, gen, 9_000)


@pytest.mark.parametrize("cid", [BAVARIA, LYON, OULU])
def test_tz_shift_changes_representation_only(contracts: dict[str, Contract], cid: str) -> None:
    c = contracts[cid]
    tcol, zone = c.time.source_name, c.layout.timezone
    clean = generate(c, 6_000, seed=11, defects=Defects.none())
    shifted = generate(c, 6_000, seed=11, defects=Defects(**{**_zero(), "tz_shift": 0.25}))
    assert shifted.truth["tz_shifted"] == 1_500
    a, b = clean.frame, shifted.frame
    assert a.drop(tcol).equals(b.drop(tcol)), "only the time column may differ"
    differs = a[tcol] != b[tcol]
    assert differs.sum() == shifted.truth["tz_shifted"]
    texts = b.filter(differs)[tcol]
    assert texts.str.contains(r"[+-]\d\d:\d\d$").any()  # explicit offset
    assert texts.str.contains(r"T\d\d:\d\d:\d\d$").any()  # naive local time
    assert not texts.str.contains(r"\+00:00$").any()  # never UTC in disguise
    assert utc_instants(a, tcol, zone).equals(utc_instants(b, tcol, zone))
    for before, after in zip(a.filter(differs)[tcol][:200], texts[:200], strict=True):
        assert python_instant(before, zone) == python_instant(after, zone)


def _zero() -> dict[str, object]:
    d = Defects.none()
    return {k: getattr(d, k) for k in d.__dataclass_fields__}


# --------------------------------------------------------------------------
# wide layout


def test_wide_layout(contracts: dict[str, Contract]) -> None:
    c = contracts[OULU]
    d = Defects(missing=0.01, spikes=0.005, late=4)
    gen = generate(c, 12_000, seed=4, defects=d)
    f, truth = gen.frame, gen.truth
    sensors = [m.source_name for m in c.measurements]
    assert f.columns == ["pump_id", "ts", *sensors]
    assert f.schema["pump_id"] == pl.String and f.schema["ts"] == pl.String
    assert all(f.schema[s] == pl.Float64 for s in sensors)
    assert truth["wrong_unit"] == 0
    assert truth["sensors"] == 4 and truth["entities"] == 3
    assert set(f["pump_id"]) == {"OP-001", "OP-002", "OP-003"}
    assert (
        f.height
        == truth["rows"]
        == (
            12_000
            - truth["gap_rows"]
            + truth["exact_duplicates"]
            + truth["key_duplicates"]
            + truth["late"]
        )
    )
    n = 12_000 - truth["gap_rows"]
    assert truth["missing"] == int(0.01 * n * 4 + 0.5)
    assert truth["spikes"] == int(0.005 * n * 4 + 0.5)
    assert f.null_count().sum_horizontal().item() == truth["missing"]
    spikes = sum(
        f.filter((pl.col(m.source_name) < m.minimum) | (pl.col(m.source_name) > m.maximum)).height
        for m in c.measurements
    )
    assert spikes == truth["spikes"]
    assert f.is_duplicated().sum() == 2 * truth["exact_duplicates"]
    assert f.height - f.unique(subset=["pump_id", "ts"]).height == (
        truth["exact_duplicates"] + truth["key_duplicates"]
    )
    assert (~f["ts"].str.ends_with("Z")).sum() == truth["tz_shifted"]
    utc = utc_instants(f, "ts", c.layout.timezone)
    assert (utc.tail(4) < DEFAULT_START).all() and (utc < DEFAULT_START).sum() == 4
    # a wide gap drops whole rows of one pump: a gap in each of its sensor series
    deltas = (
        f.select("pump_id", utc.alias("t"))
        .unique()
        .sort("pump_id", "t")
        .with_columns(d=pl.col("t").diff().over("pump_id"))
    )
    assert (
        deltas.filter(pl.col("d") > timedelta(seconds=3)).height * 4 == truth["gaps"] == 2 * 3 * 4
    )


def test_wide_headerless_source_units(contracts: dict[str, Contract], tmp_path: Path) -> None:
    """C-MAPSS: header-less, blank-separated, values in the source unit (e.g. degR)."""
    c = contracts[CMAPSS]
    gen = generate(c, 900, seed=1)
    assert gen.header is False and gen.separator == " "
    assert gen.frame.columns == list(c.layout.columns)
    assert gen.truth["missing"] == 0 and gen.truth["tz_shifted"] == 0
    s1 = c.column("s1")  # canonical K, written in degR
    factor, _ = units.conversion("K", "[degR]")
    clean = generate(c, 900, seed=1, defects=Defects.none()).frame["s1"]
    assert clean.min() >= s1.minimum * factor and clean.max() <= s1.maximum * factor
    path = write(gen, tmp_path / "train_FD001.txt", "csv")
    first = path.read_text().splitlines()[0].split(" ")
    assert len(first) == len(c.layout.columns) and first[0].isdigit()


# --------------------------------------------------------------------------
# determinism and writing


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "csv.zst", "tsv", "parquet", "jsonl", "jsonl.gz"])
def test_write_is_deterministic(contracts: dict[str, Contract], tmp_path: Path, fmt: str) -> None:
    c = contracts[LYON]
    a = write(generate(c, 3_000, seed=7), tmp_path / f"a.{fmt}")
    b = write(generate(c, 3_000, seed=7), tmp_path / "other" / f"b.{fmt}")
    other = write(generate(c, 3_000, seed=8), tmp_path / f"c.{fmt}")
    assert format_of(a) == fmt
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != other.read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "csv.zst", "tsv", "parquet", "jsonl", "jsonl.gz"])
def test_write_round_trip(contracts: dict[str, Contract], tmp_path: Path, fmt: str) -> None:
    gen = generate(contracts[BAVARIA], 2_000, seed=3, defects=Defects(late=3))
    path = write(gen, tmp_path / f"delivery.{fmt}")
    raw = path.read_bytes()
    if fmt.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif fmt.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    schema = gen.frame.schema
    if fmt == "parquet":
        back = pl.read_parquet(path)
    elif fmt.startswith("jsonl"):
        back = pl.read_ndjson(raw, schema=schema)
    else:
        back = pl.read_csv(raw, schema=schema, separator="\t" if fmt == "tsv" else ",")
    assert back.equals(gen.frame)


def test_write_plain_frame_and_bad_format(tmp_path: Path) -> None:
    frame = pl.DataFrame({"a": [1, 2], "b": ["x", None]})
    assert write(frame, tmp_path / "f.csv").read_text() == "a,b\n1,x\n2,\n"
    with pytest.raises(ValueError):
        write(frame, tmp_path / "f.xlsx")


def test_cli_generate_splits_files(contracts: dict[str, Contract], tmp_path: Path) -> None:
    c = contracts[BAVARIA]
    paths = cli_generate(c, 5_000, seed=9, out_dir=tmp_path, files=3, fmt="csv.gz")
    assert [p.name for p in paths] == [f"spindle-telemetry-9-{i}.csv.gz" for i in range(3)]
    parts = [pl.read_csv(gzip.decompress(p.read_bytes()), infer_schema=False) for p in paths]
    whole = generate(c, 5_000, seed=9).frame
    assert sum(p.height for p in parts) == whole.height
    assert pl.concat(parts)["ts"].equals(whole["ts"])


# --------------------------------------------------------------------------
# properties, scale and errors


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    rows=st.integers(0, 4_000),
    entities=st.integers(1, 6),
    share=st.floats(0.0, 0.05),
    gaps=st.integers(0, 3),
    late=st.integers(0, 20),
    shuffle=st.booleans(),
)
def test_truth_property(
    seed: int,
    rows: int,
    entities: int,
    share: float,
    gaps: int,
    late: int,
    shuffle: bool,
) -> None:
    """Whatever the mix, the truth recounts exactly from the frame."""
    c = load_contracts()[LYON]
    d = Defects(share, share / 2, share, share / 2, share / 4, gaps, shuffle, share, late)
    gen = generate(c, rows, seed=seed, entities=entities, defects=d)
    check_long_truth(c, gen, rows)


def test_one_million_rows(contracts: dict[str, Contract]) -> None:
    c = contracts[BAVARIA]
    t0 = time.perf_counter()
    gen = generate(c, 1_000_000, seed=0)
    elapsed = time.perf_counter() - t0
    truth = gen.truth
    assert (
        gen.frame.height
        == truth["rows"]
        == (1_000_000 - truth["gap_rows"] + truth["exact_duplicates"] + truth["key_duplicates"])
    )
    assert truth["exact_duplicates"] == int(0.01 * (1_000_000 - truth["gap_rows"]) + 0.5)
    assert gen.frame["value"].null_count() == truth["missing"]
    assert elapsed < 30


def test_entity_ids_follow_patterns(contracts: dict[str, Contract]) -> None:
    ids = generate(contracts[OULU], 30, entities=12, defects=Defects.none()).frame["pump_id"]
    assert ids.head(3).to_list() == ["OP-001", "OP-002", "OP-003"]
    ids = generate(contracts[LYON], 300, entities=12, defects=Defects.none()).frame["press_id"]
    assert "LP-B0" in set(ids) and all(re.fullmatch(r"LP-[A-Z][0-9]", x) for x in ids)
    with pytest.raises(ValueError):
        generate(contracts[BAVARIA], 10, entities=100)  # BSW-M01..BSW-M99 only


def test_invalid_arguments(contracts: dict[str, Contract]) -> None:
    with pytest.raises(ValueError):
        Defects(missing=1.5)
    with pytest.raises(ValueError):
        Defects(gaps=-1)
    with pytest.raises(ValueError):
        generate(contracts["urn:datalab:open-benchmarks:hydraulic-rig"], 10)
    with pytest.raises(ValueError):
        generate(contracts[BAVARIA], -1)
