"""Delimited UTF-8 text in whole-line blocks, and the fast split of a clean block.

The push parses every line of a delivery, because its receipt names each bad
value by line and column. The line path (pyarrow cuts the text into lines,
Polars splits each line and checks its field count) took a large part of
the reader's time, and stripping every field of every row a good deal more,
although a generated or exported file rarely holds a field to strip (the
measurements are in docs/performance.md, "Why the code is as it is").

So the text is read here in blocks of whole lines, and a block that is
plainly clean goes through Polars' CSV reader instead: every line has exactly
the layout's field count, no carriage return, no control character, valid
UTF-8. Its fields are stripped only when the block holds a byte that could be
whitespace. Any other block takes the line path, which names each problem by
its line. Both paths give the same frame (``tests/test_text_blocks.py``
compares them block by block on generated, damaged and real files).
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import numpy as np
import polars as pl

BOM = b"\xef\xbb\xbf"

# Polars 1.43 renamed ``missing_utf8_is_empty_string`` (both keep an empty
# field as ""; the line path does too, and the sensor check relies on it).
_EMPTY_AS_TEXT = (
    {"empty_string_is_null": False}
    if "empty_string_is_null" in inspect.signature(pl.read_csv).parameters
    else {"missing_utf8_is_empty_string": True}
)


class LineTooLong(ValueError):
    """A line longer than the block size: binary data, or not this format."""

    def __init__(self, line: int, limit: int):
        self.line = line
        super().__init__(f"line {line} is longer than {limit} bytes")


@dataclass(frozen=True)
class Block:
    """Whole lines of a file: ``lines`` of them, the first one numbered ``first_line``."""

    first_line: int
    data: bytes
    lines: int


class BlockReader:
    """Blocks of about ``size`` bytes of whole lines from ``stream``, after ``skip`` lines.

    ``next_line`` is the number of the first line not yet handed out, so a
    caller can say where a truncated stream broke off. A line longer than
    ``size`` raises ``LineTooLong`` rather than growing the buffer without
    bound (the file would be held whole).
    """

    def __init__(self, stream: BinaryIO, skip: int, size: int):
        self.stream = stream
        self.skip = skip
        self.size = size
        self.next_line = 1 + skip  # as the line path counts: the skipped lines are behind

    def __iter__(self) -> Iterator[Block]:
        buf = b""
        while True:
            chunk = self.stream.read(self.size)
            buf = buf + chunk if buf else chunk
            while self.skip and buf:
                end = buf.find(b"\n")
                if end < 0:
                    break
                buf = buf[end + 1:]
                self.skip -= 1
            if not chunk:  # end of the stream: the last line may lack its line break
                if buf and not self.skip:
                    yield self._block(buf, buf.count(b"\n") + (not buf.endswith(b"\n")))
                return
            if self.skip:
                if len(buf) > self.size:
                    raise LineTooLong(self.next_line - self.skip, self.size)
                continue
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                if len(buf) > self.size:
                    raise LineTooLong(self.next_line, self.size)
                continue
            data, buf = buf[:cut], buf[cut:]
            yield self._block(data, int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10)))

    def _block(self, data: bytes, lines: int) -> Block:
        b = Block(self.next_line, data, lines)
        self.next_line += lines
        return b


def split_clean(block: Block, names: list[str], delimiter: str) -> tuple[pl.DataFrame, bool] | None:
    """The block as text columns ``names`` plus ``_line``, and whether a field may need stripping.

    None when the block is not plainly clean; the caller then takes the line
    path. Every line has exactly ``len(names)`` fields when the block holds
    ``lines * (len(names) - 1)`` delimiters and Polars finds no line with
    more fields than that (it raises): a line with fewer would need another
    with more. One row per line is checked as well, so line numbers hold.
    """
    if len(names) < 2 or len(delimiter) != 1 or not block.data:
        return None
    a = np.frombuffer(block.data, np.uint8)
    if np.count_nonzero(a == ord(delimiter)) != block.lines * (len(names) - 1):
        return None
    # Bytes that may be whitespace (a blank, a tab, anything beyond ASCII),
    # line breaks and a tab delimiter aside: without any, stripping is a no-op.
    expected = block.lines - (not block.data.endswith(b"\n"))
    if ord(delimiter) < 0x21:
        expected += block.lines * (len(names) - 1)
    strip = np.count_nonzero((a < 0x21) | (a > 0x7E)) > expected
    if strip:
        # A carriage return, another control character (but a tab), a byte
        # order mark: the line path handles those and says where they are.
        controls = np.count_nonzero((a < 0x20) & (a != 9) & (a != 10))
        if controls or block.data.startswith(BOM):
            return None
    try:
        df = pl.read_csv(
            block.data, has_header=False, schema=dict.fromkeys(names, pl.String), separator=delimiter,
            quote_char=None, raise_if_empty=False, truncate_ragged_lines=False, **_EMPTY_AS_TEXT,
        )
    except pl.exceptions.PolarsError:  # a line with too many fields, invalid UTF-8
        return None
    if df.height != block.lines:
        return None
    first = block.first_line
    return df.with_columns(_line=pl.int_range(first, first + block.lines, dtype=pl.Int64)), bool(strip)


T = TypeVar("T")
# Items a producer thread may hold ready beyond the one the consumer works on.
AHEAD = 2


def prefetched(items: Iterable[T], ahead: int = AHEAD) -> Iterator[T]:
    """``items``, produced on a thread of their own up to ``ahead`` items before the consumer needs them.

    The push reads a block, splits it (Polars' CSV reader, numpy counts: the
    GIL released) and then types it (Polars again, with Python around every
    call). One after the other the two kept about 1.4 of two cores busy;
    with the next blocks read and split while this one is typed, both
    (docs/performance.md, "Why the code is as it is"). Order is kept, and so is each
    exception's place: whatever ``items`` raises is raised here after the
    items before it, and nothing is produced after it, so a reader's state
    (``BlockReader.next_line``) is what it was when the error came. The
    producer does nothing the consumer reports in order (it only reads and
    splits), and it is stopped and joined when the consumer stops, whether
    done, failed or closed early, before the caller closes the stream it reads.
    """
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
        except BaseException as e:  # handed to the consumer, in its place
            put(("error", e))
            return
        put(("end", None))

    t = threading.Thread(target=produce, name="datalab-blocks-ahead", daemon=True)
    t.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x  # type: ignore[misc]
            yield x  # type: ignore[misc]
    finally:
        stop.set()
        t.join()


__all__ = ["AHEAD", "BOM", "Block", "BlockReader", "LineTooLong", "prefetched", "split_clean"]
