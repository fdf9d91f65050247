"""The fast split of clean text blocks against the line path: same frames, same reasons.

``TimeseriesReader(fast_split=False)`` sends every block down the line path;
the default splits clean blocks with Polars' CSV reader. Each file here is
read both ways and must give the same rows, the same records count and the
same reasons, in order: generated deliveries of every contract, copies with
damaged lines of many kinds (some at the edge of a 2 MiB read block), and
the real files under ``shared/realdata`` against every time-series contract.
"""

from __future__ import annotations

import gzip
import io
import itertools
from pathlib import Path

import polars as pl
import pytest

from datalab.contracts.contract import Contract
from datalab.intake import formats
from datalab.intake.formats import FileRejected
from datalab.timeseries import readers, sample, text_blocks
from tests.conftest import SPINDLE


def _read(c: Contract, path: Path, fast: bool) -> tuple[pl.DataFrame, int, list[str]]:
    sn = formats.sniff(path, path.name, c.layout.delimiter)
    r = readers.TimeseriesReader(c, path, path.name, sn, fast_split=fast)
    frames = list(r.batches())
    df = pl.concat(frames) if frames else pl.DataFrame(schema=readers.long_schema(c))
    return df, r.records, r.problems.reasons()


def _same_both_ways(c: Contract, path: Path) -> tuple[pl.DataFrame, list[str]]:
    fast, n_fast, why_fast = _read(c, path, True)
    slow, n_slow, why_slow = _read(c, path, False)
    assert why_fast == why_slow, path.name
    assert n_fast == n_slow, path.name
    assert fast.schema == slow.schema
    assert fast.equals(slow), path.name  # null-aware, row for row, in order
    return fast, why_fast


@pytest.fixture
def fast_blocks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per block split_clean saw: True where it took the block."""
    seen: list[bool] = []
    real = text_blocks.split_clean

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(text_blocks, "split_clean", spy)
    return seen


def _timeseries(contracts: dict[str, Contract], shapes: tuple[str, ...] = ("long", "wide")) -> list[Contract]:
    return [c for c in contracts.values() if c.kind == "timeseries" and c.layout.shape in shapes]


def _kinds(sep: str) -> list:
    """Ways to damage one line of a file delimited by ``sep``."""
    return [
        lambda ln: ln + sep + "extra",  # a field too many
        lambda ln: ln.rsplit(sep, 1)[0],  # a field too few
        lambda ln: "",  # an empty line
        lambda ln: "   \t ",  # blanks only
        lambda ln: ln + "\r",  # a Windows line end
        lambda ln: sep.join(f" {f}\t" for f in ln.split(sep)),  # blanks and tabs around fields
        lambda ln: sep.join(f"\u00a0{f}\u2003" for f in ln.split(sep)),  # Unicode blanks around fields
        lambda ln: ln.replace(sep, sep + "\u00e9", 1),  # a non-ASCII letter (valid UTF-8)
        lambda ln: ln + "\x1f",  # the line reader's own control character
        lambda ln: ln.replace(sep, sep + "\x00", 1),  # a NUL byte
        lambda ln: ln.replace(sep, sep + '"', 1),  # a stray quote
        lambda ln: sep.join(["not-a-value"] * len(ln.split(sep))),  # nothing parses
        lambda ln: sep.join(f if i < 2 else "" for i, f in enumerate(ln.split(sep))),  # empty fields
    ]


KINDS = 13


def _damage_line(line: str, sep: str, kind: int) -> str:
    return _kinds(sep)[kind % KINDS](line)


def _damage(text: str, sep: str, every: int) -> str:
    """``text`` with a damaged line every ``every`` lines, cycling through the kinds."""
    lines = text.split("\n")
    for k, i in enumerate(range(1 + every // 2, len(lines) - 1, every)):
        if lines[i]:
            lines[i] = _damage_line(lines[i], sep, k)
    return "\n".join(lines)


def _generated(c: Contract, rows: int, tmp: Path, name: str = "delivery.csv") -> tuple[Path, str]:
    gen = sample.generate(c, rows, seed=7)
    path = sample.write(gen, tmp / name)
    return path, gen.separator


def test_clean_generated_deliveries_take_the_fast_split(contracts, tmp_path, fast_blocks):
    for c in _timeseries(contracts):
        fast_blocks.clear()
        path, _ = _generated(c, 3_000, tmp_path, f"{c.tenant}.csv")
        df, why = _same_both_ways(c, path)
        assert len(df) > 0 and why == []
        if c.layout.delimiter == "whitespace":  # runs of blanks: always the line path
            assert fast_blocks == [], c.id
        else:
            assert fast_blocks and all(fast_blocks), c.id  # the clean file never fell back


def test_damaged_lines_give_the_same_reasons_both_ways(contracts, tmp_path, fast_blocks):
    for c in _timeseries(contracts):
        path, sep = _generated(c, 4_000, tmp_path, f"{c.tenant}.csv")
        bad = tmp_path / f"{c.tenant}-damaged.csv"
        text = path.read_text()
        keep = text[:formats.SAMPLE]  # the sniffer's sample stays clean: it refuses a NUL byte itself
        keep = keep[:keep.rindex("\n")]
        bad.write_bytes((keep + _damage(text[len(keep):], sep, 37)).encode())
        _, why = _same_both_ways(c, bad)
        assert why, c.id  # the damage is reported, the same way on both paths


@pytest.mark.parametrize("kind", range(KINDS))
def test_each_kind_of_damage_alone(contracts, tmp_path, kind):
    """One damaged line in an otherwise clean file: its block falls back (or not), with the same result."""
    c = contracts[SPINDLE]
    path, sep = _generated(c, 5_000, tmp_path)
    lines = path.read_text().split("\n")
    at = 4_000  # beyond the 64 KiB the sniffer reads (it refuses a NUL byte there itself)
    assert len("\n".join(lines[:at])) > formats.SAMPLE
    lines[at] = _damage_line(lines[at], sep, kind)
    bad = tmp_path / "one.csv"
    bad.write_bytes("\n".join(lines).encode())
    _same_both_ways(c, bad)


def test_damage_at_block_edges(contracts, tmp_path, fast_blocks, monkeypatch):
    """Several 2 MiB blocks (smaller than the default, so the file stays small); damage close to where blocks are cut, and most blocks still clean."""
    monkeypatch.setattr(readers, "BATCH_BYTES", 2 << 20)
    c = contracts[SPINDLE]
    path, sep = _generated(c, 130_000, tmp_path)
    data = path.read_bytes()
    assert len(data) > 3 * readers.BATCH_BYTES
    lines = data.decode().split("\n")
    # the line around each 2 MiB boundary, give or take a few
    offsets, pos = [], 0
    for i, ln in enumerate(lines):
        pos += len(ln) + 1
        if pos // readers.BATCH_BYTES != (pos - len(ln) - 1) // readers.BATCH_BYTES:
            offsets.append(i)
    assert len(offsets) >= 3
    for k, i in enumerate(offsets):
        for j, d in enumerate((-1, 0, 1)):
            lines[i + d] = _damage_line(lines[i + d], sep, 3 * k + j)
    bad = tmp_path / "edges.csv"
    bad.write_bytes("\n".join(lines).encode())
    fast_blocks.clear()
    _, why = _same_both_ways(c, bad)
    assert why
    assert any(fast_blocks) and not all(fast_blocks)


def test_compressed_and_truncated_files_both_ways(contracts, tmp_path):
    c = contracts[SPINDLE]
    path, _ = _generated(c, 40_000, tmp_path)
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    _, why = _same_both_ways(c, gz)
    assert why == []
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    _, why = _same_both_ways(c, cut)
    assert any("cannot be read further" in w for w in why), why


def test_no_trailing_line_break_and_last_line_damaged(contracts, tmp_path):
    c = contracts[SPINDLE]
    path, sep = _generated(c, 300, tmp_path)
    text = path.read_text().rstrip("\n")
    for tail in ("", sep + "extra", "\r", " "):
        f = tmp_path / "tail.csv"
        f.write_bytes((text + tail).encode())
        df, _ = _same_both_ways(c, f)
        assert len(df) > 0


def test_real_files_against_every_contract(contracts, realdata):
    files = [p for p in sorted(realdata.rglob("*")) if p.is_file() and p.suffix in (".txt", ".csv")]
    assert files
    compared = 0
    for c in contracts.values():
        if c.kind != "timeseries":
            continue
        for p in files:
            if p.stat().st_size > 40 << 20:
                continue
            try:
                _same_both_ways(c, p)
            except FileRejected:
                continue
            compared += 1
    assert compared > 10


def test_block_reader_numbers_lines_and_skips_the_header():
    data = b"head\n" + b"".join(b"a,%d\n" % i for i in range(1000)) + b"last,1"
    blocks = list(text_blocks.BlockReader(io.BytesIO(data), 1, 64))
    assert blocks[0].first_line == 2
    for a, b in itertools.pairwise(blocks):
        assert b.first_line == a.first_line + a.lines
    assert sum(b.lines for b in blocks) == 1001
    assert b"".join(b.data for b in blocks) == data[5:]
    assert blocks[-1].data.endswith(b"last,1")


def test_block_reader_refuses_a_line_longer_than_a_block():
    data = b"a,b\n" + b"x" * 1000 + b"\nc,d\n"
    with pytest.raises(text_blocks.LineTooLong, match="line 2 is longer"):
        list(text_blocks.BlockReader(io.BytesIO(data), 0, 256))


def test_a_line_without_breaks_is_rejected_by_name_and_line(contracts, tmp_path):
    c = contracts[SPINDLE]
    path, _ = _generated(c, 50, tmp_path)
    f = tmp_path / "binary.csv"
    head = path.read_text().split("\n", 2)
    f.write_bytes(("\n".join(head[:2]) + "\n").encode() + b"1," * readers.BATCH_BYTES)
    _, _, why = _read(c, f, True)
    limit = f"longer than {readers.MAX_LINE_BYTES} bytes"
    assert any(f"binary.csv: line 3 is {limit}" in w and "cannot be read further" in w for w in why), why


@pytest.mark.parametrize(
    "data, clean, strip",
    [
        (b"a,1,x\nb,2,y\n", True, False),
        (b"a,1,x\nb,2,y", True, False),  # no line break at the end
        (b"a, 1,x\nb,2,y\n", True, True),  # a blank: strip
        (b"a,1,\xc3\xa9\nb,2,y\n", True, True),  # non-ASCII: strip (it may be a Unicode blank)
        (b"a,1,x\nb,2\n", False, None),  # a field too few
        (b"a,1,x,z\nb,2\n", False, None),  # one too many, one too few: same total
        (b"a,1,x\r\nb,2,y\r\n", False, None),  # carriage returns
        (b"a,1,x\n\nb,2,y,\n", False, None),  # an empty line
        (b"a,1,\xe9\nb,2,y\n", False, None),  # not UTF-8
        (b"\xef\xbb\xbfa,1,x\nb,2,y\n", False, None),  # byte order mark
        (b"a,1,\x00\nb,2,y\n", False, None),  # NUL
    ],
)
def test_split_clean_takes_only_plainly_clean_blocks(data, clean, strip):
    lines = data.count(b"\n") + (not data.endswith(b"\n"))
    got = text_blocks.split_clean(text_blocks.Block(10, data, lines), ["e", "v", "u"], ",")
    assert (got is not None) == clean
    if got is not None:
        df, s = got
        assert s == strip
        assert df["_line"].to_list() == list(range(10, 10 + lines))
        assert df.columns == ["e", "v", "u", "_line"]


def test_tab_delimiter_alone_does_not_ask_for_stripping():
    got = text_blocks.split_clean(text_blocks.Block(1, b"a\t1\tx\nb\t2\ty\n", 2), ["e", "v", "u"], "\t")
    assert got is not None and got[1] is False


def test_lines_holding_0x1f_are_named_and_later_lines_keep_their_numbers(contracts, tmp_path, monkeypatch):
    """The line splitter's own control character: each such line named by number, every later problem still exact.

    Two adjacent such lines, one in a later read block, then a bad value and
    a bad byte: every number is the file's own line number, on both paths.
    """
    monkeypatch.setattr(readers, "BATCH_BYTES", 64 << 10)  # several blocks in a small file
    c = contracts[SPINDLE]
    path, sep = _generated(c, 6_000, tmp_path)
    lines = path.read_text().split("\n")
    for i in (2_000, 2_001, 4_500):  # 0-based: file lines 2001, 2002 and 4501
        lines[i] += "\x1f"
    fields = lines[3_000].split(sep)
    fields[3] = "abc"
    lines[3_000] = sep.join(fields)  # file line 3001
    data = "\n".join(lines).encode()
    at = data.index(lines[5_000].encode())  # file line 5001: a byte that is not UTF-8
    bad = tmp_path / "x1f.csv"
    bad.write_bytes(data[:at] + b"\xff" + data[at:])
    _, why = _same_both_ways(c, bad)
    assert [w.split(": ")[1].split(",")[0] for w in why] == ["line 2001", "line 2002", "line 3001", "line 4501", "line 5001"], why
    assert all("0x1F is not allowed" in w for w in why if "line 2001" in w or "line 2002" in w or "line 4501" in w)
    assert "(rule: format)" in why[0] and "not valid" in why[-1]


# -- reading ahead on a thread (text_blocks.prefetched) ------------------------------


def test_prefetched_keeps_order_and_raises_in_place():
    def items():
        yield from range(5)
        raise OSError("the disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for x in text_blocks.prefetched(items(), ahead=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]  # every item before the error, none after


def test_prefetched_stops_its_thread_when_the_consumer_stops_early():
    import threading

    produced = []

    def items():
        for i in itertools.count():
            produced.append(i)
            yield i

    ahead = text_blocks.prefetched(items(), ahead=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    assert not any(t.name == "datalab-blocks-ahead" for t in threading.enumerate())
    # it read at most ahead + one more than the consumer took
    assert len(produced) <= 3 + 2 + 1


def test_a_truncated_file_of_many_blocks_keeps_every_block_before_the_break(contracts, tmp_path, fast_blocks, monkeypatch):
    # The blocks are read ahead of their typing (text_blocks.prefetched); the
    # stream's error must still come after every block before it, with the
    # line it broke off at. (The line path's own reader fails such a stream
    # before its first batch, so it is not the reference here.)
    monkeypatch.setattr(readers, "BATCH_BYTES", 64 << 10)
    c = contracts[SPINDLE]
    path, _ = _generated(c, 40_000, tmp_path)
    whole, n_whole, why_whole = _read(c, path, True)
    assert why_whole == [] and n_whole >= 40_000
    gz = gzip.compress(path.read_bytes())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gz[: 2 * len(gz) // 3])
    fast_blocks.clear()
    df, records, why = _read(c, cut, True)
    assert len(fast_blocks) > 10 and all(fast_blocks)
    assert 0 < records < n_whole
    assert df.equals(whole.head(len(df)))  # every row read before the break, as in the whole file
    assert len(why) == 1 and f"after line {records + 1}: the file cannot be read further" in why[0], why
