"""Tests of the landing zone (datalab.intake.landing.push and friends).

Every test pushes real bytes through ``push`` into a temporary lab and then
checks three things: the receipt's status, that the reasons name the file
and the exact line / column / rule, and that nothing is lost: the pushed
bytes lie byte for byte under ``landing/<tenant>/accepted|quarantine/``
and the receipt can be read back with ``get_receipt``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import CMAPSS, HYDRAULIC, SPINDLE

from datalab.config import settings
from datalab.intake.landing import Receipt, get_receipt, list_receipts, push, safe_name
from datalab.timeseries import ingest

HEADER = "machine_id,ts,sensor,value,unit\n"


def line(i: int = 0, **kw: str) -> str:
    """One valid data line of the spindle contract; ``kw`` overrides fields."""
    f = {
        "machine_id": "BSW-M01",
        "ts": f"2024-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}",
        "sensor": "spindle_temp",
        "value": f"{40 + i % 10}.5",
        "unit": "Cel",
    }
    f.update(kw)
    return ",".join(f[k] for k in ("machine_id", "ts", "sensor", "value", "unit")) + "\n"


def clean_csv(n: int = 5) -> bytes:
    return (HEADER + "".join(line(i) for i in range(n))).encode()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / "in" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def stored(home: Path, tenant: str, area: str, sha: str) -> Path:
    return home / "landing" / tenant / area / sha[:2] / sha


def assert_kept(home: Path, rec: Receipt, sources: list[Path]) -> None:
    """Nothing is lost: bytes stored byte-identical in the right area, receipt readable."""
    assert rec.status in ("accepted", "rejected")
    area, other = ("accepted", "quarantine") if rec.accepted else ("quarantine", "accepted")
    assert len(rec.files) == len(sources)
    for fr, src in zip(rec.files, sources, strict=True):
        p = stored(home, rec.tenant, area, fr.sha256)
        assert p.is_file(), f"{fr.name}: bytes not stored at {p}"
        assert p.read_bytes() == src.read_bytes()
        assert p.stat().st_mode & 0o222 == 0, "stored bytes must be read-only"
        assert fr.bytes == src.stat().st_size
        if not rec.accepted:
            assert not stored(home, rec.tenant, other, fr.sha256).exists()
    again = get_receipt(rec.delivery_id)
    assert again.delivery_id == rec.delivery_id
    assert again.status == rec.status
    assert again.reasons == rec.reasons
    assert [f.sha256 for f in again.files] == [f.sha256 for f in rec.files]
    assert again.rows == rec.rows


def push_bytes(lab: Path, contract, tmp_path: Path, name: str, data: bytes) -> Receipt:
    """Push ``data`` as a file called ``name``; check nothing was lost."""
    src = write(tmp_path, name, data)
    rec = push(contract, [src])
    assert_kept(lab, rec, [src])
    return rec


def has(rec: Receipt, *parts: str) -> bool:
    """True when one reason contains every one of ``parts``."""
    return any(all(p in r for p in parts) for r in rec.reasons)


def rejected_with(rec: Receipt, name: str, *parts: str) -> None:
    assert rec.status == "rejected"
    assert rec.reasons, "a rejected push must say why"
    assert all(r.startswith(f"{name}: ") for r in rec.reasons), rec.reasons
    assert has(rec, name, *parts), rec.reasons


# -- 1, 2: clean files and idempotent re-pushes -----------------------------


def test_clean_csv_accepted_and_repush_is_duplicate(lab, contracts, tmp_path):
    c = contracts[SPINDLE]
    src = write(tmp_path, "clean.csv", clean_csv(7))
    rec = push(c, [src])
    assert rec.status == "accepted", rec.reasons
    assert rec.reasons == []
    assert rec.rows == 7 and rec.files[0].rows == 7
    assert rec.bytes == src.stat().st_size
    assert rec.duplicate is False
    assert rec.files[0].format == "text (comma-separated)"
    assert_kept(lab, rec, [src])

    again = push(c, [src])
    assert again.duplicate is True
    assert again.delivery_id == rec.delivery_id
    assert again.status == "accepted"
    assert len(list_receipts()) == 1


def test_same_bytes_under_another_name_is_duplicate(lab, contracts, tmp_path):
    c = contracts[SPINDLE]
    first = write(tmp_path, "monday.csv", clean_csv(4))
    second = write(tmp_path, "tuesday.csv", clean_csv(4))
    rec = push(c, [first])
    assert rec.status == "accepted", rec.reasons
    again = push(c, [second])
    assert again.duplicate is True
    assert again.delivery_id == rec.delivery_id
    assert again.files[0].sha256 == rec.files[0].sha256
    assert len(list_receipts()) == 1
    assert_kept(lab, rec, [first])


# -- 3: nothing to read ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "parts"),
    [
        ("empty.csv", b"", ("empty", "0 bytes")),
        ("blank.csv", b"  \n\n \t \n", ("no data", "blank")),
        ("header-only.csv", HEADER.encode(), ("no data rows", "rule: rowCount > 0")),
    ],
)
def test_empty_files_rejected(lab, contracts, tmp_path, name, data, parts):
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, name, data)
    rejected_with(rec, name, *parts)


# -- 4, 5: compression ------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("name", "compress", "n"),
    [
        ("small.csv.gz", _gzip, 50),
        ("large.csv.gz", _gzip, 20_000),  # more than the 64 KiB sniffed
        ("small.csv.zst", _zstd, 50),
    ],
)
def test_truncated_compressed_file_rejected(lab, contracts, tmp_path, name, compress, n):
    packed = compress(clean_csv(n))
    cut = packed[: int(len(packed) * 0.7)]
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, name, cut)
    assert rec.status == "rejected"
    assert has(rec, name, "truncated"), rec.reasons
    assert any("corrupt" in r for r in rec.reasons), rec.reasons


@pytest.mark.parametrize(
    ("name", "compress", "compression"),
    [
        ("ok.csv.gz", _gzip, "gzip"),
        ("ok.csv.zst", _zstd, "zstd"),
    ],
)
def test_valid_compressed_csv_accepted(lab, contracts, tmp_path, name, compress, compression):
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, name, compress(clean_csv(300)))
    assert rec.status == "accepted", rec.reasons
    assert rec.rows == 300
    assert rec.files[0].compression == compression


# -- 6, 7: delimiter and encoding --------------------------------------------


def test_wrong_delimiter_rejected(lab, contracts, tmp_path):
    data = clean_csv(5).replace(b",", b";")
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "semi.csv", data)
    rejected_with(rec, "semi.csv", "wrong delimiter", "comma", "semicolon")


def test_latin1_byte_rejected_with_line(lab, contracts, tmp_path):
    data = HEADER.encode() + line(0).encode() + line(1, value="4\xe9.5").encode("latin-1")
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "latin.csv", data)
    rejected_with(rec, "latin.csv", "line 3", "rule: encoding")
    assert has(rec, "not valid utf-8")


def test_utf16_with_bom_rejected(lab, contracts, tmp_path):
    data = clean_csv(3).decode().encode("utf-16")
    assert data[:2] in (b"\xff\xfe", b"\xfe\xff")
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "utf16.csv", data)
    rejected_with(rec, "utf16.csv", "NUL byte", "binary")
    assert has(rec, "UTF-16")


# -- 8, 9: header and field counts -------------------------------------------


def test_extra_column_rejected(lab, contracts, tmp_path):
    data = HEADER.strip() + ",colour\n" + "".join(line(i).strip() + ",red\n" for i in range(3))
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "extra.csv", data.encode())
    rejected_with(rec, "extra.csv", "line 1", "'colour'", "not in the contract", "rule: schema")


def test_missing_required_column_rejected(lab, contracts, tmp_path):
    data = "machine_id,ts,sensor,value\n" + "".join(
        line(i).rsplit(",", 1)[0] + "\n" for i in range(3)
    )
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "nounit.csv", data.encode())
    rejected_with(rec, "nounit.csv", "line 1", "'unit'", "missing", "rule: schema")


def test_duplicated_header_column_rejected(lab, contracts, tmp_path):
    data = "machine_id,ts,sensor,value,value\n" + "".join(line(i) for i in range(3))
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "dup.csv", data.encode())
    rejected_with(rec, "dup.csv", "line 1", "'value'", "more than once", "rule: schema")


def test_wrong_field_counts_name_each_line(lab, contracts, tmp_path):
    data = (
        HEADER
        + line(0)
        + line(1).strip()
        + ",surplus\n"  # line 3: one field too many
        + line(2)
        + "BSW-M01,2024-03-01T10:00:03,spindle_temp,41.5\n"  # line 5: one too few
        + line(4)
    )
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "fields.csv", data.encode())
    rejected_with(rec, "fields.csv", "line 3", "6 field(s)", "expects 5", "rule: schema")
    rejected_with(rec, "fields.csv", "line 5", "4 field(s)", "expects 5", "rule: schema")


# -- 10, 11: values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "parts"),
    [
        ({"value": "abc"}, ("'value'", "'abc' is not a number", "rule: logicalType number")),
        ({"value": '"1,5"'}, ("'value'", "'1,5' is not a number", "rule: logicalType number")),
        (
            {"ts": "yesterday"},
            ("'ts'", "'yesterday' is not an ISO-8601 timestamp", "rule: logicalType timestamp"),
        ),
        (
            {"sensor": "coolant_flow"},
            ("'sensor'", "'coolant_flow' is not a measurement", "rule: schema"),
        ),
        ({"machine_id": ""}, ("'machine_id'", "empty", "rule: required")),
    ],
    ids=["abc", "comma-decimal", "timestamp", "sensor", "empty-machine"],
)
def test_bad_value_named_with_line_and_column(lab, contracts, tmp_path, bad, parts):
    data = HEADER + line(0) + line(1) + line(2, **bad) + line(3)
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "values.csv", data.encode())
    rejected_with(rec, "values.csv", "line 4", *parts)
    assert not has(rec, "line 2") and not has(rec, "line 3") and not has(rec, "line 5")


@pytest.mark.parametrize("blanks", [False, True], ids=["clean-block", "stripped"])
def test_only_values_that_were_there_and_did_not_cast_are_named(lab, contracts, tmp_path, blanks):
    """Empty fields and missing-value words come out null as bad values do; only the bad are reasons.

    The reader casts the text itself and then looks at the nulls
    (``readers._uncast``): with empty fields, a missing-value word and one
    bad value in the same column, only the bad value's line is named, and
    the missing ones are null in the raw table. ``blanks`` puts blanks around
    a field, so the block is stripped and not split by Polars' CSV reader.
    """
    c = dataclasses.replace(contracts[SPINDLE], missing_values=("NA",))
    values = {1: "", 2: "NA", 4: "4x", 5: "", 6: " 7.5 " if blanks else "7.5"}
    data = HEADER + "".join(line(i, value=values.get(i, f"{i}.25")) for i in range(8))
    rec = push_bytes(lab, c, tmp_path, "nulls.csv", data.encode())
    rejected_with(rec, "nulls.csv", "line 6", "'value'", "'4x' is not a number", "rule: logicalType number")
    assert len(rec.reasons) == 1, rec.reasons
    del values[4]  # accepted without the bad line: the raw table holds the rest, missing ones null
    ok = HEADER + "".join(line(i, value=values.get(i, f"{i}.25")) for i in range(8) if i != 4)
    rec = push_bytes(lab, c, tmp_path, "nulls-ok.csv", ok.encode())
    assert rec.status == "accepted", rec.reasons
    raw = pl.read_parquet(ingest.raw_path(c, rec.delivery_id, settings()))
    assert raw.get_column("raw_value").to_list() == [0.25, None, None, 3.25, None, 7.5, 7.25]


def test_unparseable_timestamp_not_also_called_empty(lab, contracts, tmp_path):
    data = HEADER + line(0) + line(1, ts="yesterday") + line(2)
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "ts.csv", data.encode())
    rejected_with(rec, "ts.csv", "line 3", "'ts'", "'yesterday'", "rule: logicalType timestamp")
    assert not has(rec, "line 3", "'ts'", "empty"), rec.reasons
    assert len(rec.reasons) == 1, rec.reasons


def test_many_bad_lines_are_capped_with_summary(lab, contracts, tmp_path):
    data = HEADER + "".join(line(i, value="abc") for i in range(500))
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "many.csv", data.encode())
    rejected_with(rec, "many.csv", "line 2", "'value'", "'abc'", "rule: logicalType number")
    assert len(rec.reasons) <= 25, len(rec.reasons)
    summary = [r for r in rec.reasons if "more problem(s)" in r]
    assert summary, rec.reasons
    assert any("480 more problem(s)" in r and "logicalType number" in r for r in summary), summary
    assert rec.rows == 500


# -- 12: other kinds of files ------------------------------------------------


def _zip_bytes() -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w") as zf:
        zf.writestr("readings.csv", clean_csv(5))
    return bio.getvalue()


def _parquet_bytes(table: pa.Table) -> bytes:
    bio = io.BytesIO()
    pq.write_table(table, bio)
    return bio.getvalue()


WRONG_PARQUET = _parquet_bytes(pa.table({"station": ["a", "b"], "reading": [1.0, 2.0]}))


@pytest.mark.parametrize(
    ("name", "data", "parts"),
    [
        ("archive.csv", _zip_bytes(), ("ZIP archive",)),
        ("image.csv", b"\x89PNG\r\n\x1a\n" + bytes(200), ("PNG image",)),
        ("part.csv", b"ISO-10303-21;\nHEADER;\nENDSEC;\nEND-ISO-10303-21;\n", ("STEP CAD file",)),
        (
            "wrong.parquet",
            WRONG_PARQUET,
            ("line 1", "'station'", "not in the contract", "rule: schema"),
        ),
        ("cut.parquet", WRONG_PARQUET[: len(WRONG_PARQUET) // 2], ("Parquet", "truncated")),
    ],
    ids=["zip", "png", "step", "parquet-columns", "parquet-truncated"],
)
def test_not_a_data_file_rejected_by_content(lab, contracts, tmp_path, name, data, parts):
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, name, data)
    rejected_with(rec, name, *parts)
    if name == "wrong.parquet":
        assert rec.files[0].format == "parquet"
        assert has(rec, "required column 'machine_id' is missing")


def test_valid_parquet_accepted(lab, contracts, tmp_path):
    table = pa.table(
        {
            "machine_id": ["BSW-M01"] * 3,
            "ts": ["2024-03-01T10:00:00", "2024-03-01T10:00:01", "2024-03-01T10:00:02"],
            "sensor": ["vibration"] * 3,
            "value": [1.0, 2.0, 3.0],
            "unit": ["mm/s"] * 3,
        }
    )
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "ok.parquet", _parquet_bytes(table))
    assert rec.status == "accepted", rec.reasons
    assert rec.rows == 3


# -- 13: JSON Lines ------------------------------------------------------------

JSONL_BUG = (
    "readers.TimeseriesReader._jsonl iterates df.iter_rows() of a frame whose columns are "
    "('line', '_line') but unpacks them as (ln, text), so json.loads gets the line number: "
    "every JSON Lines push raises TypeError('the JSON object must be str, bytes or bytearray, "
    "not int'), with no receipt and the staged bytes deleted"
)


def _jsonl_rows(n: int) -> list[str]:
    return [
        json.dumps(
            {
                "machine_id": "BSW-M02",
                "ts": f"2024-03-01T10:00:{i:02d}",
                "sensor": "vibration",
                "value": 1.5 + i,
                "unit": "mm/s",
            }
        )
        + "\n"
        for i in range(n)
    ]


def test_jsonl_accepted(lab, contracts, tmp_path):
    rec = push_bytes(
        lab, contracts[SPINDLE], tmp_path, "ok.jsonl", "".join(_jsonl_rows(4)).encode()
    )
    assert rec.status == "accepted", rec.reasons
    assert rec.rows == 4
    assert rec.files[0].format == "jsonl"


def test_jsonl_invalid_line_named(lab, contracts, tmp_path):
    rows = _jsonl_rows(4)
    rows.insert(2, '{"machine_id": "BSW-M02", oops}\n')  # line 3
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "bad.jsonl", "".join(rows).encode())
    rejected_with(rec, "bad.jsonl", "line 3", "not a JSON object", "rule: format")
    assert not has(rec, "line 2") and not has(rec, "line 4")


# -- 14: hostile file names ---------------------------------------------------


def _tree(root: Path, skip: Path) -> set[Path]:
    """Everything under ``root`` but ``skip``, and the entries directly beside ``root``.

    Only the names beside the test's own folder are taken, not the trees of the tests that ran
    before: their SQLite catalogs drop ``-wal``/``-shm`` files whenever a connection is collected,
    which made a whole-tree comparison fail at random (CI, stop 25).
    """
    mine = {p for p in root.rglob("*") if skip not in p.parents and p != skip}
    return mine | set(root.parent.iterdir())


@pytest.mark.parametrize(
    "hostile",
    [
        "../../etc/passwd",
        "..\\..\\evil.csv",
        "C:\\Windows\\..\\system.ini",
        "evil\x00name\n\x1b[31m\r.csv",
        "\u202egpj.csv",
        "/abs/../../..",
        "..",
        " ..",
    ],
    ids=["posix", "windows", "drive", "control", "bidi", "abs-dots", "dotdot", "space-dotdot"],
)
def test_hostile_file_name_is_reduced_to_safe_base_name(lab, contracts, tmp_path, hostile):
    src = write(tmp_path, "data.csv", clean_csv(3))
    before = _tree(tmp_path, lab)
    rec = push(contracts[SPINDLE], [(hostile, src)])
    assert rec.status == "accepted", rec.reasons
    name = rec.files[0].name
    assert name == safe_name(hostile)
    assert name
    assert "/" not in name and "\\" not in name and ":" not in name
    assert not name.startswith("."), name
    assert all(ch.isprintable() for ch in name), repr(name)
    assert get_receipt(rec.delivery_id).files[0].name == name
    assert_kept(lab, rec, [src])
    # nothing new anywhere outside the lab home
    assert _tree(tmp_path, lab) == before
    assert (
        lab.resolve() in stored(lab, rec.tenant, "accepted", rec.files[0].sha256).resolve().parents
    )


# -- 15: the real public data --------------------------------------------------


@pytest.mark.parametrize(
    ("fname", "rows"),
    [("train_FD001.txt", 20631), ("test_FD001.txt", 13096)],
)
def test_real_cmapss_accepted(lab, contracts, realdata, fname, rows):
    src = realdata / "cmapss" / fname
    rec = push(contracts[CMAPSS], [src])
    assert rec.status == "accepted", rec.reasons[:5]
    assert rec.rows == rows
    assert rec.files[0].format == "text (whitespace-separated)"
    assert_kept(lab, rec, [src])


def test_cmapss_with_tabs_and_runs_of_blanks_reads_as_single_spaced(lab, contracts, realdata, tmp_path):
    """Blank-separated means any run of whitespace: tabs and doubled spaces give the rows single spaces give."""
    lines = (realdata / "cmapss" / "test_FD001.txt").read_text().splitlines()[:200]
    messy = "\n".join(ln.replace(" ", "\t", 3).replace(" ", "  ", 2) if i % 3 == 0 else ln for i, ln in enumerate(lines))
    a = push_bytes(lab, contracts[CMAPSS], tmp_path, "tidy.txt", ("\n".join(lines) + "\n").encode())
    b = push_bytes(lab, contracts[CMAPSS], tmp_path, "messy.txt", (messy + "\n").encode())
    assert a.status == "accepted" and b.status == "accepted", (a.reasons, b.reasons)
    assert a.rows == b.rows == 200
    s = settings()
    cols = ["entity", "time", "sensor", "raw_value"]
    read = [pl.read_parquet(ingest.raw_path(contracts[CMAPSS], r.delivery_id, s)).select(cols) for r in (a, b)]
    assert read[0].equals(read[1])


def test_real_cmapss_rul_file_rejected(lab, contracts, realdata):
    src = realdata / "cmapss" / "RUL_FD001.txt"
    rec = push(contracts[CMAPSS], [src])
    rejected_with(rec, "RUL_FD001.txt", "line 1:", "1 field(s)", "expects 26", "rule: schema")
    assert len(rec.reasons) <= 25
    assert_kept(lab, rec, [src])


def test_real_cmapss_readme_rejected(lab, contracts, realdata):
    src = realdata / "cmapss" / "readme.txt"
    rec = push(contracts[CMAPSS], [src])
    rejected_with(rec, "readme.txt", "line 1:", "expects 26", "rule: schema")
    assert_kept(lab, rec, [src])


def test_quoted_text_under_a_whitespace_contract_rejected_by_line(lab, contracts, tmp_path):
    """A quote in a blank-separated file (a README, say) is a character, not a CSV quote.

    pyarrow's CSV parser cannot split on runs of blanks; the push used to
    fail with a ValueError from it instead of a receipt.
    """
    data = b'This dataset is "FD001".\nSee the paper for details.\n'
    rec = push_bytes(lab, contracts[CMAPSS], tmp_path, "notes.txt", data)
    rejected_with(rec, "notes.txt", "line 1:", "expects 26", "rule: schema")


def test_real_hydraulic_documentation_rejected_under_cmapss(lab, contracts, realdata):
    src = realdata / "hydraulic" / "documentation.txt"
    rec = push(contracts[CMAPSS], [src])
    rejected_with(rec, "documentation.txt", "line 1:", "expects 26", "rule: schema")
    assert_kept(lab, rec, [src])


def test_real_hydraulic_two_sensors_one_push(lab, contracts, realdata):
    srcs = [realdata / "hydraulic" / "TS1.txt", realdata / "hydraulic" / "VS1.txt"]
    rec = push(contracts[HYDRAULIC], srcs)
    assert rec.status == "accepted", rec.reasons[:5]
    assert rec.rows == 4410
    assert [f.rows for f in rec.files] == [2205, 2205]
    assert [f.name for f in rec.files] == ["TS1.txt", "VS1.txt"]
    assert_kept(lab, rec, srcs)


@pytest.mark.parametrize("fname", ["profile.txt", "documentation.txt"])
def test_real_hydraulic_non_sensor_file_rejected(lab, contracts, realdata, fname):
    src = realdata / "hydraulic" / fname
    rec = push(contracts[HYDRAULIC], [src])
    rejected_with(rec, fname, "does not name a sensor", "rule: layout.sensor_from_filename")
    assert_kept(lab, rec, [src])


def test_real_step_file_rejected_under_timeseries_contract(lab, contracts, realdata):
    src = realdata / "cad" / "step" / "nist_ftc_11_asme1_rb.stp"
    rec = push(contracts[SPINDLE], [src])
    rejected_with(rec, src.name, "STEP CAD file")
    assert_kept(lab, rec, [src])


# -- 16: a large file is streamed, not loaded ----------------------------------


def _big_csv(path: Path, target: int) -> int:
    """Write a valid spindle CSV of about ``target`` bytes; returns its data rows."""
    lines, size, i = [], 0, 0
    while size < 64 * 1024:
        ln = line(i, machine_id=f"BSW-M{i % 7:02d}", value=f"{20 + i % 50}.5").encode()
        lines.append(ln)
        size += len(ln)
        i += 1
    block = b"".join(lines)
    repeats = target // len(block)
    with open(path, "wb") as f:
        f.write(HEADER.encode())
        for _ in range(repeats):
            f.write(block)
    return len(lines) * repeats


# ru_maxrss of a child starts from the parent's peak on Linux (it is kept
# across fork and exec), so the push's own peak is read from VmHWM, which
# belongs to the child's fresh address space; ru_maxrss is printed too.
PUSH_SCRIPT = """
import resource, sys
from pathlib import Path
from datalab.contracts import contract  # ingest: the raw-table writer the push uses
from datalab.timeseries import ingest
from datalab.intake import landing
from datalab.config import settings
import polars, pyarrow.parquet  # imported by the push's raw writer; part of "the interpreter"

def hwm():
    for ln in open("/proc/self/status"):
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

c = contract.load_all(settings().contracts_dir)[sys.argv[1]]
base = hwm()
r = landing.push(c, [Path(sys.argv[2])])
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(r.status, r.rows, base, hwm(), maxrss, r.delivery_id)
"""


def _push_in_subprocess(path: Path) -> tuple[str, int, int, int, int, str]:
    """Push ``path`` under SPINDLE in a fresh interpreter; peak sizes in bytes."""
    out = subprocess.run(
        [sys.executable, "-c", PUSH_SCRIPT, SPINDLE, str(path)],
        env=dict(os.environ),  # DATALAB_HOME / DATALAB_CONTRACTS from the lab fixture
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    status, rows, base, peak, maxrss, delivery = out.stdout.split()[-6:]
    return status, int(rows), int(base) * 1024, int(peak) * 1024, int(maxrss) * 1024, delivery


@pytest.mark.slow
def test_large_file_is_not_loaded_whole(lab, tmp_path):
    mib = 1024 * 1024
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    small_rows, big_rows = _big_csv(small, 30 * mib), _big_csv(big, 300 * mib)
    small_size, size = small.stat().st_size, big.stat().st_size

    results = {}
    for path, rows in ((small, small_rows), (big, big_rows)):
        status, n, base, peak, maxrss, delivery = _push_in_subprocess(path)
        assert status == "accepted"
        assert n == rows
        rec = get_receipt(delivery)
        assert rec.rows == rows
        kept = stored(lab, rec.tenant, "accepted", rec.files[0].sha256)
        assert kept.stat().st_size == path.stat().st_size
        results[path.name] = (base, peak, maxrss)

    base, peak, maxrss = results["big.csv"]
    small_peak = results["small.csv"][1]
    msg = (
        f"peak RSS {peak / mib:.0f} MiB (after imports {base / mib:.0f} MiB, ru_maxrss "
        f"{maxrss / mib:.0f} MiB) for a {size / mib:.0f} MiB file; "
        f"{small_peak / mib:.0f} MiB for a {small_size / mib:.0f} MiB file"
    )
    # Streaming in batches needs the interpreter plus a bounded buffer, whatever
    # the file size: 10x the file may cost at most a quarter of the extra bytes
    # (measured with a streaming reader: ~210-260 MiB for either file) ...
    assert peak - small_peak < 0.25 * (size - small_size), msg
    # ... and what the push itself adds (beyond the interpreter with its imports)
    # stays below the size of the file.
    print(msg)
    assert peak - base < size, msg


# -- 17: contract limits -------------------------------------------------------


def test_file_over_contract_limit_rejected(lab, contracts, tmp_path):
    small = dataclasses.replace(contracts[SPINDLE], max_file_bytes=1000)
    src = write(tmp_path, "big.csv", clean_csv(100))
    assert src.stat().st_size > 1000
    rec = push(small, [src])
    rejected_with(rec, "big.csv", "exceeds", "1,000 bytes", "rule: limits.max_file_bytes")
    # By design the over-limit bytes are not kept; the receipt still identifies them.
    assert rec.files[0].bytes == src.stat().st_size
    assert rec.files[0].sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    for area in ("accepted", "quarantine"):
        assert not stored(lab, rec.tenant, area, rec.files[0].sha256).exists()
    again = get_receipt(rec.delivery_id)
    assert again.status == "rejected" and again.reasons == rec.reasons


def test_iso_timestamp_spellings_all_read_as_the_same_instant(lab, contracts, tmp_path):
    """Z, z, +hh, +hhmm, +hh:mm, a space for T, and no offset (the layout's zone) all parse; nonsense does not."""
    import polars as pl

    from datalab.config import settings
    from datalab.timeseries import ingest

    c = contracts[SPINDLE]
    spellings = [
        "2024-03-01T09:00:00Z", "2024-03-01T09:00:00z", "2024-03-01T10:00:00+01", "2024-03-01T10:00:00+0100",
        "2024-03-01T10:00:00.000+01:00", "2024-03-01 10:00:00+01:00", "2024-03-01T10:00:00", "2024-03-01 10:00:00",
    ]
    data = HEADER + "".join(line(0, machine_id=f"BSW-M{i:02d}", ts=ts) for i, ts in enumerate(spellings))
    rec = push_bytes(lab, c, tmp_path, "spellings.csv", data.encode())
    assert rec.accepted, rec.reasons
    got = pl.read_parquet(ingest.raw_path(c, rec.delivery_id, settings())).sort("entity")
    assert got.height == len(spellings)
    assert got["time"].dt.to_string("%Y-%m-%dT%H:%M:%S%z").unique().to_list() == ["2024-03-01T09:00:00+0000"]
    bad = HEADER + line(0, ts="2024-03-01T10:00:00Z+01:00") + line(1, ts="2024-03-01X10:00:00")
    rej = push_bytes(lab, c, tmp_path, "bad-spellings.csv", bad.encode())
    rejected_with(rej, "bad-spellings.csv", "line 2", "'ts'", "rule: logicalType timestamp")
    assert has(rej, "line 3", "'ts'")


def test_raw_writer_hands_a_write_error_to_the_caller(lab, contracts, tmp_path):
    """A batch the writer thread cannot write fails the push's next call, and abort leaves no file."""
    import polars as pl

    from datalab.config import settings
    from datalab.timeseries.ingest import RawWriter

    w = RawWriter(contracts[SPINDLE], "d-writer-test", settings())
    good = pl.DataFrame({"entity": ["M"], "time": [None], "sensor": ["spindle_temp"], "raw_value": [1.0], "raw_unit": ["Cel"]},
                        schema={k: v for k, v in w.schema.items() if k != "delivery_id"})
    w.write(good)
    wrong = good.with_columns(pl.col("raw_value").cast(pl.Int64))  # a schema the open file does not have
    with pytest.raises(ValueError, match="schema"):
        for _ in range(RawWriter.QUEUE + 3):
            w.write(wrong)
        w.commit()
    w.abort()
    assert not w.tmp.exists() and not w.path.exists()


def _many_batches(n: int, bad: dict[int, bytes]) -> bytes:
    """A spindle CSV of ``n`` data lines (several 2 MiB read blocks); line numbers in ``bad`` replaced."""
    out = [HEADER.encode()]
    for i in range(n):
        out.append(bad.get(i + 2, line(i, machine_id=f"BSW-M{i % 7:02d}").encode()))
    return b"".join(out)


def test_problems_of_every_read_block_name_their_line(lab, contracts, tmp_path, monkeypatch):
    """Line numbers stay exact across read blocks; each block's problems come in file order."""
    # About 42,000 lines per 2 MiB block (set here: the default is larger);
    # within a block, reading and splitting problems come before casting ones.
    from datalab.timeseries import readers

    monkeypatch.setattr(readers, "BATCH_BYTES", 2 << 20)
    bad = {
        10: line(0, value="abc").encode(),
        60_000: b"BSW-M01,2024-03-01T10:00:00,spindle_temp,1.5\n",  # a missing field
        100_000: line(0, value="ten").encode(),
        130_000: line(0, machine_id="BSW-M\xe901").encode("latin-1"),
        155_000: line(0, ts="yesterday").encode(),
    }
    data = _many_batches(160_000, bad)
    assert len(data) > 3 * (2 << 20)  # more than three read blocks
    rec = push_bytes(lab, contracts[SPINDLE], tmp_path, "blocks.csv", data)
    assert rec.status == "rejected"
    found = [int(r.split("line ")[1].split(",")[0].split(":")[0]) for r in rec.reasons if "line " in r]
    assert found == sorted(bad), rec.reasons


def test_a_push_does_not_import_pandas(lab, contracts, realdata):
    """pandas costs a push process 0.3 s and 60 MB to import, and the push has no use for it.

    pyarrow imports it behind some calls (``pa.array`` of Python values,
    ``fill_null``); the raw table's one-value delivery id column is built
    without them (``engine.one_value_column``). A fresh interpreter pushes
    a real C-MAPSS file and says whether pandas was imported.
    """
    code = ("import sys\nfrom pathlib import Path\nfrom datalab.contracts import contract\n"
            "from datalab.intake import landing\nfrom datalab.config import settings\n"
            "c = contract.load_all(settings().contracts_dir)[sys.argv[1]]\n"
            "r = landing.push(c, [Path(sys.argv[2])])\n"
            "print(r.status, 'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, CMAPSS, str(realdata / "cmapss" / "train_FD001.txt")],
                         env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["accepted", "False"], out.stdout


# --- the staging copy: hashed on its own thread while it is written --------------


def _no_kernel_copy(monkeypatch: pytest.MonkeyPatch, how: str) -> list[int]:
    """Make ``copy_file_range`` unusable as ``how`` says (or count its calls for "kernel"); the calls made."""
    import errno

    from datalab.intake import landing

    calls: list[int] = []
    real = getattr(os, "copy_file_range", None)
    if how == "kernel":
        if real is None:
            pytest.skip("os.copy_file_range is Linux only")
        monkeypatch.setattr(landing, "KERNEL_STEP", 3 * landing.CHUNK + 17)  # several steps, none on a chunk boundary
        monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(1) or real(*a))
    elif how == "other-file-system":
        def refuse(*a: object) -> int:
            calls.append(1)
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    elif real is not None:  # "not-linux"
        monkeypatch.delattr(os, "copy_file_range")
    return calls


@pytest.mark.parametrize("how", ["kernel", "other-file-system", "not-linux"])
def test_staging_copy_keeps_every_byte_and_hashes_them_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A file of many chunks (and a partial last one) is copied byte for byte; the hash covers the whole
    file; progress is reported in order and ends at the file's size; past the size limit the whole file
    is still hashed and nothing is stored. The same where the kernel copies (``_KernelCopy``) and where
    it cannot (another file system; no ``copy_file_range``), the copy then passing through the process."""
    from datalab.intake import landing

    calls = _no_kernel_copy(monkeypatch, how)
    src = tmp_path / "big.bin"
    data = os.urandom(landing.CHUNK * 9 + 12345)  # more chunks than the hasher's ring holds
    src.write_bytes(data)
    seen: list[tuple[int, int]] = []
    sha, size, over = landing._stage(src, tmp_path / "staged", 1 << 40, "big.bin", lambda n, done, total: seen.append((done, total)))
    assert (sha, size, over) == (hashlib.sha256(data).hexdigest(), len(data), False)
    assert (tmp_path / "staged").read_bytes() == data
    assert seen[-1] == (len(data), len(data)) and [d for d, _ in seen] == sorted({d for d, _ in seen})
    assert len(calls) == {"kernel": 5, "other-file-system": 1, "not-linux": 0}[how]  # 4 steps and the one that finds the end

    sha, size, over = landing._stage(src, tmp_path / "over", 1000, "big.bin", None)
    assert (sha, size, over) == (hashlib.sha256(data).hexdigest(), len(data), True)
    assert (tmp_path / "over").read_bytes() == b""

    # a small file is hashed on the pusher's thread, in one buffer
    before = len(calls)
    for size in (0, 1, landing.CHUNK, landing.CHUNK * 2 + 7, landing.CHUNK * landing._Hasher.THREAD_FROM):
        small = tmp_path / f"small-{size}.bin"
        small.write_bytes(data[:size])
        assert landing._stage(small, tmp_path / f"s-{size}", 1 << 40, small.name, None) == (hashlib.sha256(data[:size]).hexdigest(), size, False)
        assert (tmp_path / f"s-{size}").read_bytes() == data[:size]
    assert len(calls) == before  # never copied by the kernel


@pytest.mark.parametrize("how", ["kernel", "other-file-system"])
def test_staging_copy_that_fails_raises_and_leaves_no_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A copy that fails mid-file (a full disk) is raised to the pusher, and the hasher's thread ends."""
    import threading

    from datalab.intake import landing

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(landing.CHUNK * 8))  # large enough for the hasher's own thread
    calls = []
    if how == "kernel":
        _no_kernel_copy(monkeypatch, how)
        real = os.copy_file_range

        def failing_kernel(*a: int) -> int:
            calls.append(1)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return real(*a)

        monkeypatch.setattr(os, "copy_file_range", failing_kernel)
        runs = landing._KernelCopy
    else:
        _no_kernel_copy(monkeypatch, how)

        def failing(f, chunk) -> None:
            calls.append(len(chunk))
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
            f.write(chunk)

        monkeypatch.setattr(landing, "_write_all", failing)
        runs = landing._Hasher
    started = []
    monkeypatch.setattr(runs, "_run", lambda self, run=runs._run: started.append(1) or run(self))
    with pytest.raises(OSError, match="No space left"):
        landing._stage(src, tmp_path / "staged", 1 << 40, "big.bin", None)
    assert started and not [t for t in threading.enumerate() if t.name == "datalab-stage-hash"]


def test_staging_copy_that_cannot_be_read_back_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's copy is hashed from what it stored: bytes that cannot be read back fail the push, naming the file."""
    from datalab.intake import landing

    _no_kernel_copy(monkeypatch, "kernel")
    src = tmp_path / "big.csv"
    src.write_bytes(os.urandom(landing.CHUNK * 6))
    monkeypatch.setattr(os, "preadv", lambda *a: 0)
    with pytest.raises(OSError, match=r"big\.csv: .* bytes copied into staging from byte 0 on could not be read back"):
        landing._stage(src, tmp_path / "staged", 1 << 40, "big.csv", None)
