"""What a delivered file is, judged by its content rather than its name.

Sniffing reads at most the first 64 KiB (decompressed), so a file much larger
than memory is never loaded to decide what it is. Each refusal names the file
and the rule, e.g. "a ZIP archive, not a data file".
"""

from __future__ import annotations

import gzip
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SAMPLE = 64 * 1024

MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
}
REJECT_MAGIC = {
    b"PK\x03\x04": "a ZIP archive (unpack it and push the files inside)",
    b"BZh": "a bzip2 archive (use gzip or zstd)",
    b"\xfd7zXZ\x00": "an xz archive (use gzip or zstd)",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"ISO-10303-21": "a STEP CAD file (push it under a CAD contract)",
    b"SQLite format 3": "an SQLite database",
}


class FileRejected(Exception):
    """The file cannot be read under the contract; ``reasons`` says why."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("; ".join(reasons))


@dataclass(frozen=True)
class Sniffed:
    format: str  # delimited | parquet | jsonl
    compression: str | None  # gzip | zstd | None
    delimiter: str | None  # for delimited: ",", "\t", ";", "|" or "whitespace"
    quoted: bool  # a quote character occurs: needs a real CSV parser
    sample: bytes  # first bytes after decompression
    label: str | None = None  # measurement files: what the magic bytes say, e.g. "ASAM MDF 4.10"


def open_stream(path: Path, compression: str | None) -> BinaryIO:
    """The file's bytes, decompressed, as a stream (never read whole)."""
    if compression == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == "zstd":
        # Arrow's zstd stream raises on a truncated frame (zstandard's reader
        # returns EOF silently); buffering adds readline for header sniffing.
        import pyarrow as pa

        return io.BufferedReader(pa.CompressedInputStream(pa.OSFile(str(path)), "zstd"))  # type: ignore[arg-type]
    return open(path, "rb")


def _read_sample(path: Path, compression: str | None, name: str) -> bytes:
    try:
        with open_stream(path, compression) as f:
            return f.read(SAMPLE)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise FileRejected([f"{name}: the {compression} stream is corrupt or truncated ({e})"]) from e
    except Exception as e:  # zstandard.ZstdError and friends
        raise FileRejected([f"{name}: the {compression} stream is corrupt or truncated ({e})"]) from e


_DELIMS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe", "whitespace": "whitespace"}


def delimiter_words(d: str) -> str:
    """A delimiter as people can read it in a message: quoted, and named (a blank is otherwise invisible)."""
    if d == "whitespace":
        return "whitespace (runs of blanks)"
    names = {**_DELIMS, " ": "space"}
    return f"{d!r} ({names[d]})" if d in names else repr(d)


def _lines(sample: bytes, n: int = 20) -> list[bytes]:
    lines = sample.split(b"\n")
    if len(sample) == SAMPLE:
        lines = lines[:-1]  # the last one may be cut
    return [ln.rstrip(b"\r") for ln in lines if ln.strip()][:n]


def sniff_delimiter(sample: bytes) -> str | None:
    """The delimiter that splits most of the first lines into the same count > 1.

    Most, not all: a file with a few broken lines must still be recognised so
    that the line check can name those lines instead of a vague refusal.
    """
    lines = _lines(sample)
    if not lines:
        return None
    need = max(1, int(len(lines) * 0.8))
    for d in (b"\t", b",", b";", b"|"):
        counts = Counter(ln.count(d) for ln in lines)
        n, freq = counts.most_common(1)[0]
        if n > 0 and freq >= need:
            return d.decode()
    counts = Counter(len(ln.split()) for ln in lines)
    n, freq = counts.most_common(1)[0]
    if n > 1 and freq >= need:
        return "whitespace"
    return None


def sniff(path: Path, name: str, expected_delimiter: str | None = None) -> Sniffed:
    """Decide what ``path`` holds, or raise FileRejected naming the rule broken."""
    size = path.stat().st_size
    if size == 0:
        raise FileRejected([f"{name}: the file is empty (0 bytes)"])
    with open(path, "rb") as f:
        head = f.read(1024)
    for magic, what in REJECT_MAGIC.items():
        if head.startswith(magic):
            raise FileRejected([f"{name}: the content is {what}, not a sensor data file"])
    from datalab.intake.measurement import sniff_magic  # no format library is imported by sniffing

    if (found := sniff_magic(head)) is not None:
        return Sniffed(found.format, None, None, False, b"", found.label)
    compression = next((c for m, c in MAGIC.items() if head.startswith(m)), None)
    if head.startswith(b"PAR1"):
        with open(path, "rb") as f:
            f.seek(max(0, size - 4))
            if size < 12 or f.read(4) != b"PAR1":
                raise FileRejected([f"{name}: starts like Parquet but has no Parquet footer (truncated?)"])
        return Sniffed("parquet", None, None, False, b"")
    sample = _read_sample(path, compression, name)
    if not sample.strip():
        raise FileRejected([f"{name}: the file holds no data (only blank space)"])
    if sample.startswith(b"PAR1"):
        raise FileRejected([f"{name}: compressed Parquet is not accepted; Parquet compresses itself"])
    if b"\x00" in sample:
        where = sample.index(b"\x00")
        raise FileRejected([
            f"{name}: byte {where} is a NUL byte: the content is binary, not text "
            "(or UTF-16; deliver UTF-8)"
        ])
    body = sample.removeprefix(b"\xef\xbb\xbf").lstrip()
    if body.startswith(b"["):
        raise FileRejected([f"{name}: a JSON array; deliver JSON Lines (one object per line)"])
    if body.startswith(b"{"):
        return Sniffed("jsonl", compression, None, False, sample)
    delim = sniff_delimiter(sample)
    if expected_delimiter and delim and delim != expected_delimiter:
        raise FileRejected([
            f"{name}: wrong delimiter: the contract's layout says {delimiter_words(expected_delimiter)}, "
            f"the file uses {delimiter_words(delim)}"
        ])
    delim = expected_delimiter or delim
    if delim is None:
        lines = _lines(sample, 2)
        if len(lines) <= 1 and lines and b"," not in lines[0]:
            delim = ","  # a single-column or single-line file: let the column check speak
        else:
            raise FileRejected([
                f"{name}: cannot tell the delimiter: the first lines do not split into the same number "
                "of fields by comma, tab, semicolon, pipe or blanks"
            ])
    return Sniffed("delimited", compression, delim, b'"' in sample, sample)


def describe(s: Sniffed) -> str:
    if s.label:
        return s.label
    base = {"delimited": f"text ({_DELIMS.get(s.delimiter or '', s.delimiter)}-separated)"}.get(s.format, s.format)
    return base + (f", {s.compression}-compressed" if s.compression else "")
