"""Read delivered time-series files into the lab's long, typed table.

Every layout a contract can describe (long, wide, matrix; delimited text,
Parquet, JSON Lines; plain, gzip or zstd) comes out as the same columns:
``entity, time, sensor, raw_value, raw_unit`` plus the contract's attribute
columns. Files are read in batches, so a file larger than memory is never
held whole; the push check and the raw asset use the same reader.

Text is read in blocks of whole lines. A block that is plainly clean (every
line has the layout's field count, no control characters) is split by
Polars' CSV reader (``text_blocks``); any other is read one line per row and
split by Polars string expressions, which keeps exact line numbers for every
problem ("line 1234, column 'value': 'abc' is not a number"). Both give the
same frame. Files with quoted fields go to pyarrow's CSV parser and report
record numbers.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from datalab.contracts.contract import Column, Contract
from datalab.contracts.raw_table import TIME_DTYPES, VALUE_DTYPES, long_schema  # noqa: F401  (re-exported)
from datalab.intake.formats import Sniffed, open_stream
from datalab.intake.receipts import MAX_REASON_CHARS, clip  # noqa: F401  (readers.clip, as callers know it)
from datalab.timeseries import text_blocks

MAX_DETAILED = 20  # problems listed one by one per file; the rest are counted per rule
# Small blocks read on this thread: pyarrow's threaded reader reads ~32 blocks
# ahead, which would hold ~1 GiB of a large file in memory. Each block costs
# a fixed number of small Polars calls, so larger blocks cost less CPU; the
# push's peak must not grow with the file, though
# (tests/test_landing.py::test_large_file_is_not_loaded_whole). 4 MiB blocks
# are faster than 2 MiB and their peak stays flat as the file grows; 8 MiB
# was barely faster still and its peak grew with the file (the measurements
# are in docs/performance.md, "Why the code is as it is").
BATCH_BYTES = 4 << 20
# The longest line any reader holds (header and body alike). A longer one is
# rejected by its number, never read whole: a small gzip of one huge line
# once cost far more memory than the file and a huge receipt (the incident's
# sizes are in docs/performance.md). Equal to BATCH_BYTES so the
# block reader's own bound is this one.
MAX_LINE_BYTES = BATCH_BYTES
@dataclass
class Problems:
    """Problems of one file: the first ones in detail, then counts per rule."""

    name: str
    detailed: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, rule: str, message: str) -> None:
        self.counts[rule] += 1
        if len(self.detailed) < MAX_DETAILED:
            self.detailed.append(f"{self.name}: {clip(message)} (rule: {rule})")

    def __bool__(self) -> bool:
        return any(self.counts.values())

    def reasons(self) -> list[str]:
        out = list(self.detailed)
        listed = Counter(re.search(r"\(rule: (.*)\)$", d).group(1) for d in self.detailed)  # type: ignore[union-attr]
        for rule, n in self.counts.items():
            if n > listed.get(rule, 0):
                out.append(f"{self.name}: {n - listed.get(rule, 0)} more problem(s) of rule {rule}")
        return out


class TimeseriesReader:
    """Streams one delivered file as batches of the long table.

    Iterate ``batches()``; afterwards ``problems`` holds what was wrong and
    ``records`` how many data records the file had. A reader meant for the
    push check keeps going after problems so the receipt lists them all.
    """

    def __init__(self, contract: Contract, path: Path, name: str, sniffed: Sniffed, fast_split: bool = True):
        self.c = contract
        self.path = path
        self.name = name
        self.sniffed = sniffed
        self.problems = Problems(name)
        self.records = 0
        self.lay = contract.layout
        self._matrix_sensor: str | None = None
        self.side: dict | None = None  # side tables of the delivery (datalab.intake.measurement.sidefiles)
        # False: every block takes the line path (tests compare the two paths)
        self.fast_split = fast_split
        # The contract's missingValues tokens that are not numbers ('NA', 'n/a'):
        # a value cell holding one is missing, not "not a number". Numeric
        # sentinels (-999) are read as numbers and made missing by curation,
        # which compares them as numbers ('-999.0' is -999 too).
        self.missing_tokens = contract.missing_words

    # -- column expectations ------------------------------------------------

    def _expected(self) -> tuple[list[str], set[str]]:
        """(all allowed file columns, required file columns) for the layout."""
        c, lay = self.c, self.lay
        ent, tim = c.entity.source_name, c.time.source_name
        attrs = [a.source_name for a in c.attributes if a.name != lay.row_attribute]
        req_attrs = {a.source_name for a in c.attributes if a.required and a.name != lay.row_attribute}
        if lay.shape == "long":
            cols = [ent, tim, lay.sensor_column, lay.value_column]
            if lay.unit_column:
                cols.append(lay.unit_column)
            return cols + attrs, set(cols) | req_attrs
        meas = [m.source_name for m in c.measurements]
        req_meas = {m.source_name for m in c.measurements if m.required}
        return [ent, tim, *attrs, *meas], {ent, tim} | req_attrs | req_meas

    def _check_header(self, header: list[str]) -> bool:
        allowed, required = self._expected()
        ok = True
        dup = [h for h, n in Counter(header).items() if n > 1]
        for h in dup:
            self.problems.add("schema", f"line 1: column {h!r} appears more than once")
            ok = False
        for i, h in enumerate(header):
            if h not in allowed:
                self.problems.add("schema", f"line 1, field {i + 1}: column {h!r} is not in the contract (expected {allowed})")
                ok = False
        for r in sorted(required - set(header)):
            self.problems.add("schema", f"line 1: required column {r!r} is missing")
            ok = False
        return ok

    # -- entry point --------------------------------------------------------

    def batches(self) -> Iterator[pl.DataFrame]:
        if self.lay.format is not None or self.sniffed.label is not None:  # a measurement file (datalab.intake.measurement)
            from datalab.intake.measurement.core import read_checked

            yield from read_checked(self)
            return
        if self.lay.shape == "matrix":
            m = re.match(self.lay.sensor_from_filename or "", Path(self.name).name)
            names = {c.source_name: c.name for c in self.c.measurements}
            if not m or m.group("sensor") not in names:
                sensor = m.group("sensor") if m else None
                self.problems.add(
                    "layout.sensor_from_filename",
                    f"the file name does not name a sensor of the contract (got {sensor!r}, expected one of {sorted(names)})",
                )
                return
            self._matrix_sensor = names[m.group("sensor")]
        fmt = self.sniffed.format
        if fmt == "parquet":
            yield from self._parquet()
        elif fmt == "jsonl":
            yield from self._jsonl()
        elif self.sniffed.quoted and self.sniffed.delimiter != "whitespace":
            # pyarrow's CSV parser splits on one character; runs of blanks
            # take the line path, where a quote is just a character.
            yield from self._quoted_csv()
        else:
            yield from self._lines_text()

    # -- text, one line per row -------------------------------------------

    def _arrow_lines(self, stream: object, skip: int, line_no: int, enc: str,
                     block_size: int = BATCH_BYTES) -> Iterator[tuple[int, pl.Series]]:
        """(first line number, lines as Utf8) per run of consecutive lines of ``stream``; bad UTF-8 reported.

        ``line_no`` is the file's number of the stream's line ``skip + 1``.
        pyarrow splits lines on 0x1F here (no line holds it in delimited
        text), so a line that does hold it has two fields: it is reported by
        its number and left out, and the lines around it are yielded as
        separate runs so that every later line keeps its number. The
        stream's own errors (truncated, corrupt) are the caller's to report.
        """
        read_opts = pacsv.ReadOptions(
            column_names=["line"], skip_rows=skip, block_size=block_size, use_threads=False,
            encoding="utf8" if enc in ("utf-8", "utf8") else enc,
        )
        offset = line_no - skip - 1  # pyarrow numbers the stream's lines from 1, skipped ones included
        left_out: list[int] = []  # file line numbers, increasing; pyarrow finds them before yielding later lines

        def on_invalid(row: pacsv.InvalidRow) -> str:
            if row.number is None or row.number < 1:  # not known: reported, numbering as it comes
                self.problems.add("format", "a line holds the control character 0x1F, which delimited text may not hold")
            else:  # reported when the lines before it have been yielded, so problems stay in file order
                left_out.append(row.number + offset)
            return "skip"

        def step_over(n: int) -> None:
            self.problems.add("format", f"line {n}: the control character 0x1F is not allowed in delimited text")

        parse = pacsv.ParseOptions(
            delimiter="\x1f", quote_char=False, escape_char=False,
            newlines_in_values=False, ignore_empty_lines=False, invalid_row_handler=on_invalid,
        )
        conv = pacsv.ConvertOptions(column_types={"line": pa.binary()}, strings_can_be_null=False)
        reader = pacsv.open_csv(stream, read_options=read_opts, parse_options=parse, convert_options=conv)
        gap = 0  # index into left_out of the first line not yet passed
        for rb in reader:
            raw = rb.column(0)
            start = 0
            while start < len(raw):
                while gap < len(left_out) and left_out[gap] == line_no:  # the next line is one left out
                    step_over(line_no)
                    line_no += 1
                    gap += 1
                run = len(raw) - start if gap == len(left_out) else min(len(raw) - start, left_out[gap] - line_no)
                part = raw.slice(start, run)
                try:
                    text = part.cast(pa.string())
                except pa.ArrowInvalid:
                    text = self._repair_utf8(part, line_no)
                yield line_no, pl.Series("line", text)
                start += run
                line_no += run
        for n in left_out[gap:]:  # after the last line yielded
            step_over(n)

    def _line_batches(self, skip: int) -> Iterator[tuple[int, pl.Series]]:
        """(first line number, lines as Utf8) per batch; bad UTF-8 reported."""
        enc = self.lay.encoding.lower().replace("_", "-")
        line_no = skip + 1
        with open_stream(self.path, self.sniffed.compression) as stream:
            try:
                for line_no, lines in self._arrow_lines(stream, skip, skip + 1, enc):
                    yield line_no, lines
                    line_no += len(lines)
            except Exception as e:  # Arrow, OS, EOF and zstd errors alike
                self._cannot_read_further(line_no, e)

    def _cannot_read_further(self, line_no: int, e: Exception) -> None:
        msg = str(e).split("\n")[0]
        self.problems.add("format", f"after line {line_no - 1}: the file cannot be read further ({msg}); truncated or corrupt?")

    def _text_batches(self, skip: int, header: list[str]) -> Iterator[tuple[pl.DataFrame, bool]]:
        """(text fields named ``header`` plus ``_line``, whether to strip them) per batch.

        UTF-8 text with a one-character delimiter is read in blocks of whole
        lines (``text_blocks``); a clean block is split by Polars' CSV reader,
        any other takes the line path, which names every problem by its line.
        """
        delim = self.sniffed.delimiter or ","
        enc = self.lay.encoding.lower().replace("_", "-")
        if not self.fast_split or enc not in ("utf-8", "utf8") or len(delim) != 1:
            for first_line, lines in self._line_batches(skip):
                split = self._split(lines, first_line, header)
                if split is not None:
                    yield split, True
            return
        with open_stream(self.path, self.sniffed.compression) as stream:
            blocks = text_blocks.BlockReader(stream, skip, BATCH_BYTES)
            # Read and split ahead on a thread while this thread types the block before
            # (text_blocks.prefetched); closed, so its thread has stopped, before the stream is.
            ahead = text_blocks.prefetched((b, text_blocks.split_clean(b, header, delim)) for b in blocks)
            try:
                for block, clean in ahead:
                    if clean is not None:
                        yield clean
                        continue
                    for first_line, lines in self._arrow_lines(io.BytesIO(block.data), 0, block.first_line, "utf8",
                                                                block_size=max(BATCH_BYTES, len(block.data) + 1)):
                        split = self._split(lines, first_line, header)
                        if split is not None:
                            yield split, True
            except text_blocks.LineTooLong as e:
                self.problems.add("format", f"{e}; the file cannot be read further (not delimited text, or corrupt?)")
            except Exception as e:  # Arrow, OS, EOF and zstd errors alike
                self._cannot_read_further(blocks.next_line, e)
            finally:
                ahead.close()

    def _repair_utf8(self, raw: pa.Array, first_line: int) -> pa.Array:
        out = []
        for i, b in enumerate(raw.to_pylist()):
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError as e:
                self.problems.add(
                    "encoding",
                    f"line {first_line + i}, byte {e.start}: not valid {self.lay.encoding} "
                    f"(found {b[e.start:e.start + 4]!r}); deliver {self.lay.encoding} or declare the encoding in the contract's layout",
                )
                out.append(None)
        return pa.array(out, pa.string())

    def _split(self, lines: pl.Series, first_line: int, header: list[str]) -> pl.DataFrame | None:
        """``_line`` and the lines split into text fields named ``header``; bad field counts are problems."""
        ncols = len(header)
        delim = self.sniffed.delimiter or ","
        df = pl.DataFrame({"line": lines}).with_columns(
            _line=pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64)
        )
        if delim == "whitespace":
            df = df.with_columns(pl.col("line").str.strip_chars())
            # Runs of whitespace become one space. Most files (C-MAPSS) already have single spaces
            # once stripped: finding that out is a fifth of the rewrite's cost (3 against 15 ms at
            # 10,000 lines), and a line without a run or a tab is what the rewrite would give.
            if df.select(pl.col("line").str.contains(r"\s\s|[^\S ]").any()).item():
                df = df.with_columns(pl.col("line").str.replace_all(r"\s+", " "))
            delim = " "
        else:
            df = df.with_columns(pl.col("line").str.strip_chars_end("\r"))
        df = df.filter(pl.col("line").is_not_null() & (pl.col("line").str.strip_chars() != ""))
        if df.is_empty():
            return None
        df = df.with_columns(_parts=pl.col("line").str.split(delim, inclusive=False))
        n = df.get_column("_parts").list.len()
        bad = df.filter(n != ncols)
        if not bad.is_empty():
            for ln, parts in bad.select("_line", pl.col("_parts").list.len()).head(MAX_DETAILED).iter_rows():
                self.problems.add(
                    "schema",
                    f"line {ln}: {parts} field(s), the layout expects {ncols} "
                    f"({'extra' if parts > ncols else 'missing'} column, or wrong delimiter)",
                )
            for _ in range(len(bad) - min(len(bad), MAX_DETAILED)):
                self.problems.counts["schema"] += 1
            df = df.filter(n == ncols)
        return df.select("_line", *[pl.col("_parts").list.get(i).alias(h) for i, h in enumerate(header)])

    def _lines_text(self) -> Iterator[pl.DataFrame]:
        lay = self.lay
        if lay.shape == "matrix":
            header = [f"c{i}" for i in range(lay.samples_per_row or 0)]
            skip = 1 if lay.header else 0
        elif lay.header:
            first = self._first_line()
            if first is None:
                if not self.problems.counts["format"]:  # not already "line 1 is longer than ..."
                    self.problems.add("format", "the file holds no header line")
                return
            delim = self.sniffed.delimiter or ","
            header = first.split() if delim == "whitespace" else [h.strip() for h in first.split(delim)]
            header[0] = header[0].lstrip("\ufeff")
            if not self._check_header(header):
                return
            skip = 1
        else:
            header = list(lay.columns)
            skip = 0
        for split, strip in self._text_batches(skip, header):
            self.records += len(split)
            out = self._typed_long(split, header, strip=strip)
            if out is not None:
                yield out

    def _first_line(self) -> str | None:
        with open_stream(self.path, self.sniffed.compression) as s:
            raw = s.readline(MAX_LINE_BYTES + 1)  # bounded: a file of one endless line is not held whole
        if not raw:
            return None
        if len(raw) > MAX_LINE_BYTES:
            self.problems.add("format", f"line 1 is longer than {MAX_LINE_BYTES} bytes; "
                                        "the file cannot be read further (not delimited text, or corrupt?)")
            return None
        try:
            return raw.decode(self.lay.encoding).rstrip("\r\n")
        except UnicodeDecodeError as e:
            self.problems.add("encoding", f"line 1, byte {e.start}: the header is not valid {self.lay.encoding}")
            return None

    # -- quoted CSV, Parquet, JSON Lines ------------------------------------

    def _quoted_csv(self) -> Iterator[pl.DataFrame]:
        header = None if self.lay.header else list(self.lay.columns)
        bad: list[str] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            bad.append(row.text)
            return "skip"

        with open_stream(self.path, self.sniffed.compression) as stream:
            try:
                reader = pacsv.open_csv(
                    stream,
                    read_options=pacsv.ReadOptions(block_size=BATCH_BYTES, column_names=header),
                    parse_options=pacsv.ParseOptions(delimiter=self.sniffed.delimiter or ",", invalid_row_handler=on_invalid),
                    convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header or [], pa.string()) or None, strings_can_be_null=True, auto_dict_encode=False),
                )
            except pa.ArrowInvalid as e:
                self.problems.add("format", f"cannot parse as CSV: {str(e).splitlines()[0]}")
                return
            if self.lay.header and not self._check_header(reader.schema.names):
                return
            record = 1 + (1 if self.lay.header else 0)
            try:
                for rb in reader:
                    df = pl.from_arrow(rb).cast(pl.String)  # type: ignore[union-attr]
                    df = df.with_columns(_line=pl.int_range(record, record + len(df), dtype=pl.Int64))
                    record += len(df)
                    self.records += len(df)
                    out = self._typed_long(df, df.columns[:-1])
                    if out is not None:
                        yield out
            except pa.ArrowInvalid as e:
                self.problems.add("encoding" if "UTF8" in str(e) else "format", f"near record {record}: {str(e).splitlines()[0]}")
        for text in bad:
            self.problems.add("schema", f"record {text[:80]!r}: wrong number of fields")

    def _parquet(self) -> Iterator[pl.DataFrame]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:
            self.problems.add("format", f"not a readable Parquet file ({e})")
            return
        names = pf.schema_arrow.names
        if not self._check_header(names):
            return
        row = 1
        try:
            for rb in pf.iter_batches(batch_size=1_000_000):
                df = pl.from_arrow(rb)
                df = df.with_columns(_line=pl.int_range(row, row + len(df), dtype=pl.Int64))  # type: ignore[union-attr]
                row += len(df)
                self.records += len(df)
                out = self._typed_long(df, names, unit="row")  # type: ignore[arg-type]
                if out is not None:
                    yield out
        except Exception as e:
            self.problems.add("format", f"after row {row - 1}: the Parquet data cannot be read ({e})")

    def _jsonl(self) -> Iterator[pl.DataFrame]:
        allowed, required = self._expected()
        seen_header = False
        for first_line, lines in self._line_batches(0):
            df = pl.DataFrame({"line": lines}).with_columns(
                _line=pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64)
            ).filter(pl.col("line").is_not_null() & (pl.col("line").str.strip_chars() != ""))
            if df.is_empty():
                continue
            rows, keys = [], Counter()
            for text, ln in df.select("line", "_line").iter_rows():
                try:
                    obj = json.loads(text)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    self.problems.add("format", f"line {ln}: not a JSON object ({e})")
                    continue
                keys.update(obj)
                rows.append({"_line": ln, **{k: None if v is None else str(v) for k, v in obj.items()}})
            if not rows:
                continue
            if not seen_header:
                seen_header = True
                if not self._check_header([k for k in keys if k != "_line"]):
                    return
            unknown = set(keys) - set(allowed)
            for k in sorted(unknown):
                self.problems.add("schema", f"key {k!r} is not in the contract (expected {allowed})")
            for r in sorted(required - set(keys)):
                self.problems.add("schema", f"required key {r!r} never appears")
            frame = pl.DataFrame(rows, schema={"_line": pl.Int64, **dict.fromkeys(allowed, pl.String)})
            self.records += len(frame)
            out = self._typed_long(frame, allowed)
            if out is not None:
                yield out

    # -- typing and reshaping -----------------------------------------------

    def _cast(self, df: pl.DataFrame, col: str, target: Column | str, unit: str) -> pl.Expr:
        """Expression casting ``col`` to the property's type; records bad values."""
        lt = target if isinstance(target, str) else target.logical_type
        s = df.get_column(col)
        if s.dtype == pl.String:
            s = s.str.strip_chars()
            empty = (s == "") | (s.is_in(self.missing_tokens) if lt == "number" and self.missing_tokens else False)
            s = pl.when(empty).then(None).otherwise(s)  # type: ignore[assignment]
            s = df.select(s.alias(col)).get_column(col) if isinstance(s, pl.Expr) else s
            if lt == "timestamp":
                out = self._parse_ts(s)
            elif lt == "integer" or lt == "time-integer":
                out = s.cast(pl.Int64, strict=False)
                as_float = s.cast(pl.Float64, strict=False)
                whole = as_float.is_not_null() & (as_float == as_float.floor())
                out = pl.select(pl.when(out.is_null() & whole).then(as_float.cast(pl.Int64)).otherwise(out)).to_series()
            elif lt == "number":
                out = s.cast(pl.Float64, strict=False)
            elif lt == "boolean":
                low = s.str.to_lowercase()
                out = pl.select(pl.when(low.is_in(["true", "1", "yes"])).then(True).when(low.is_in(["false", "0", "no"])).then(False).otherwise(None)).to_series()
            else:
                out = s
        else:
            try:
                if lt == "timestamp" and isinstance(s.dtype, pl.Datetime):
                    out = s.dt.replace_time_zone(self.lay.timezone) if s.dtype.time_zone is None else s  # type: ignore[attr-defined]
                    out = out.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
                else:
                    out = s.cast(VALUE_DTYPES.get(lt, pl.String), strict=False)
            except Exception:
                out = pl.Series(col, [None] * len(s), VALUE_DTYPES.get(lt, pl.String))
        bad = s.is_not_null() & out.is_null()
        if bad.any():
            what = {"timestamp": "an ISO-8601 timestamp", "integer": "an integer", "number": "a number", "boolean": "true or false"}.get(lt, lt)
            lines = df.get_column("_line").filter(bad)
            vals = s.filter(bad)
            for ln, v in zip(lines.head(MAX_DETAILED), vals.head(MAX_DETAILED), strict=False):
                self.problems.add(f"logicalType {lt}", f"{unit} {ln}, column {col!r}: {str(v)[:60]!r} is not {what}")
            for _ in range(int(bad.sum()) - min(int(bad.sum()), MAX_DETAILED)):
                self.problems.counts[f"logicalType {lt}"] += 1
        return out.alias(col)

    def _parse_ts(self, s: pl.Series) -> pl.Series:
        """ISO 8601 text -> UTC timestamps; values without an offset are in the layout's time zone.

        ``%#z`` reads ``Z``, ``+01``, ``+0100`` and ``+01:00``, so offsets
        need no rewriting; the space ISO 8601 allows in place of ``T`` is
        rewritten only when some value uses it. The two regex rewrites this
        replaced were a large share of the push (measured in
        docs/performance.md).
        """
        norm = s
        if s.str.contains(" ", literal=True).any():
            norm = s.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
        fmt = self.lay.timestamp_format
        if fmt:
            naive = norm.str.to_datetime(fmt, time_unit="us", strict=False)
            aware = None
        else:
            aware = norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="us", strict=False)
            if aware.null_count() == norm.null_count():  # all carry an offset: the usual case
                return aware.dt.convert_time_zone("UTC")
            naive = norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
        if naive.dtype.time_zone is None:  # type: ignore[attr-defined]
            naive = naive.dt.replace_time_zone(self.lay.timezone, ambiguous="earliest", non_existent="null")
        naive = naive.dt.convert_time_zone("UTC")
        if aware is None:
            return naive
        return aware.dt.convert_time_zone("UTC").fill_null(naive)

    def _required(self, df: pl.DataFrame, cols: list[tuple[str, str]], unit: str, source: pl.DataFrame) -> pl.Series:
        """Which rows have every required value (``cols``: typed column, source column).

        Only values empty in the file are reported here: one that failed to
        parse was already reported by the cast."""
        drop = pl.Series("drop", [False] * len(df), dtype=pl.Boolean)
        for col, src in cols:
            nulls = df.get_column(col).is_null()
            if not nulls.any():
                continue
            raw = source.get_column(src)
            empty = raw.is_null() | (raw.cast(pl.String).str.strip_chars() == "")
            report = nulls & empty
            for ln in df.get_column("_line").filter(report).head(MAX_DETAILED):
                self.problems.add("required", f"{unit} {ln}, column {src!r}: empty, but the contract requires a value")
            n = int(report.sum())
            if n > MAX_DETAILED:
                self.problems.counts["required"] += n - MAX_DETAILED
            drop = drop | nulls
        return ~drop

    def _text_cast(self, clean: pl.Expr, lt: str) -> pl.Expr | None:
        """The cast of stripped text (empty already null) to a logical type, as one expression.

        None for a timestamp with a declared format: that one is parsed by
        ``_parse_ts`` on the series. A timestamp is first tried with an
        offset (the usual case); ``_cast_all`` falls back to ``_parse_ts``
        for a batch where some value did not parse that way.
        """
        if lt == "timestamp":
            if self.lay.timestamp_format:
                return None
            return clean.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_unit="us", strict=False).dt.convert_time_zone("UTC")
        if lt in ("integer", "time-integer"):
            f = clean.cast(pl.Float64, strict=False)
            return pl.coalesce(clean.cast(pl.Int64, strict=False), pl.when(f == f.floor()).then(f.cast(pl.Int64, strict=False)))
        if lt == "number":
            return clean.cast(pl.Float64, strict=False)
        if lt == "boolean":
            low = clean.str.to_lowercase()
            return pl.when(low.is_in(["true", "1", "yes"])).then(True).when(low.is_in(["false", "0", "no"])).then(False)
        return clean

    def _cast_all(self, df: pl.DataFrame, casts: list[tuple[str, Column | str]], extra: list[pl.Expr],
                  strip: bool = True) -> pl.DataFrame:
        """``_line``, the casts (named ``_c0``, ``_c1``, ... in order) and ``extra``, one row per row of ``df``.

        Text columns are stripped, emptied to null and cast in one
        ``select``, so Polars runs the columns in parallel; column by
        column, as eager series, the casts took a large share of the push
        (measured in docs/performance.md). Each cast's cleaned text is kept
        as ``_s<i>`` for ``_report_casts``. Columns that arrive typed
        (Parquet, JSON Lines) are cast by ``_cast``, later, in order.
        ``strip=False`` when no field
        can hold whitespace (``text_blocks.split_clean`` checked the bytes):
        stripping every field took a noticeable part of the push.
        """
        exprs: list[pl.Expr] = [pl.col("_line")]
        for i, (col, target) in enumerate(casts):
            if df.schema[col] != pl.String:
                continue
            lt = target if isinstance(target, str) else target.logical_type
            x = pl.col(col).str.strip_chars() if strip else pl.col(col)
            if lt in ("number", "integer", "boolean"):
                # The text itself is cast: an empty field does not cast (null)
                # either way, and rebuilding every column as text with its
                # empty fields nulled first, to keep for the report, cost a
                # third of the cast (docs/performance.md). _report_casts
                # looks at the text of the few rows that came out null.
                out = self._text_cast(x, lt)
                if lt == "number" and self.missing_tokens:  # ('NaN' may be one: it casts)
                    out = pl.when(~x.is_in(self.missing_tokens)).then(out)
                exprs.append(out.alias(f"_c{i}"))  # type: ignore[union-attr]
                continue
            clean = pl.when(x != "").then(x)
            out = self._text_cast(clean, lt)
            exprs += [clean.alias(f"_s{i}"), (out if out is not None else clean).alias(f"_c{i}")]
        res = df.select(*exprs, *extra)
        for i, (col, target) in enumerate(casts):
            if df.schema[col] != pl.String:
                continue
            lt = target if isinstance(target, str) else target.logical_type
            if lt != "timestamp":
                continue
            if self.lay.timestamp_format:
                res = res.with_columns(self._parse_ts(res[f"_s{i}"]).alias(f"_c{i}"))
            elif res[f"_c{i}"].null_count() != res[f"_s{i}"].null_count():
                # Only the values without an offset (or with a blank for
                # the T, or bad) go through _parse_ts, which gives them what
                # it would give them in the whole column.
                todo = (res[f"_c{i}"].is_null() & res[f"_s{i}"].is_not_null()).arg_true()
                fixed = self._parse_ts(res[f"_s{i}"].gather(todo))
                res = res.with_columns(res[f"_c{i}"].scatter(todo, fixed))
        return res

    def _report_casts(self, res: pl.DataFrame, df: pl.DataFrame, casts: list[tuple[str, Column | str]],
                      which: range, unit: str) -> pl.DataFrame:
        """Report values that did not cast (casts ``which``, in order); typed columns are cast here."""
        for i in which:
            col, target = casts[i]
            if f"_c{i}" not in res.columns:  # arrived typed: _cast reports as before
                res = res.with_columns(self._cast(df, col, target, unit).alias(f"_c{i}"))
                continue
            lt = target if isinstance(target, str) else target.logical_type
            if f"_s{i}" in res.columns:
                bad = res.get_column(f"_s{i}").is_not_null() & res.get_column(f"_c{i}").is_null()
                if not bad.any():
                    continue
                rows = res.select("_line", f"_s{i}").filter(bad)
            else:  # cast from the text itself: of the values that came out null, those that were not empty
                rows = self._uncast(res, df, i, col, lt)
            n = len(rows)
            if not n:
                continue
            what = {"timestamp": "an ISO-8601 timestamp", "integer": "an integer", "number": "a number", "boolean": "true or false"}.get(lt, lt)
            for ln, v in rows.head(MAX_DETAILED).iter_rows():
                self.problems.add(f"logicalType {lt}", f"{unit} {ln}, column {col!r}: {str(v)[:60]!r} is not {what}")
            self.problems.counts[f"logicalType {lt}"] += n - min(n, MAX_DETAILED)
        return res

    def _uncast(self, res: pl.DataFrame, df: pl.DataFrame, i: int, col: str, lt: str) -> pl.DataFrame:
        """(_line, text) of the values of ``col`` that were there and did not cast to ``lt`` (``_c<i>`` of ``res``).

        ``res`` has a row for each row of ``df``. Only the rows whose cast is
        null are looked at: empty fields (and, for numbers, the contract's
        missing-value words) are missing, not bad, as ``_cast_all`` read them.
        """
        cast, source = res.get_column(f"_c{i}"), df.get_column(col)
        none = pl.DataFrame(schema={"_line": pl.Int64, "_s": pl.String})
        nulls = cast.null_count() - source.null_count()  # (a null in the file is null cast)
        if not nulls:
            return none
        # Every empty field (and missing-value word) came out null: if they are all
        # the nulls, nothing failed, and one count said so (a blank field is not
        # counted here, so stripped text takes the longer way below).
        empty = source == ""
        if lt == "number" and self.missing_tokens:
            empty = empty | source.is_in(self.missing_tokens)
        if int(empty.sum()) == nulls:
            return none
        text = pl.col("_s").str.strip_chars()
        there = text != ""
        if lt == "number" and self.missing_tokens:
            there = there & ~text.is_in(self.missing_tokens)
        null = pl.DataFrame({"_line": res.get_column("_line"), "_s": source}).filter(cast.is_null() & source.is_not_null())
        return null.select("_line", text).filter(there)

    def _typed_long(self, df: pl.DataFrame, header: list[str], unit: str = "line", strip: bool = True) -> pl.DataFrame | None:
        c, lay = self.c, self.lay
        if lay.shape == "matrix":
            return self._matrix_long(self._matrix_values(df, [h for h in header if h.startswith("c")], unit))
        ent, tim = c.entity, c.time
        attrs = [a for a in c.attributes if a.source_name in header]
        casts: list[tuple[str, Column | str]] = [
            (ent.source_name, "string" if ent.logical_type == "string" else "integer"),
            (tim.source_name, tim.logical_type if tim.logical_type == "timestamp" else "integer"),
            *[(a.source_name, a) for a in attrs],
        ]
        keys = len(casts)  # entity, time and attributes; the values follow
        meas = [m for m in c.measurements if m.source_name in header] if lay.shape != "long" else []
        casts += [(lay.value_column, "number")] if lay.shape == "long" else [(m.source_name, "number") for m in meas]
        extra = []
        if lay.shape == "long":
            def text(col: str) -> pl.Expr:
                return pl.col(col).str.strip_chars() if strip else pl.col(col)

            extra = [text(lay.sensor_column).alias("_sensor"),
                     (text(lay.unit_column) if lay.unit_column else pl.lit(None, pl.String)).alias("raw_unit")]
        res = self._cast_all(df, casts, extra, strip)
        # Problems in the order the file's reader always gave them: keys, then
        # required keys, then values, then unknown sensors.
        res = self._report_casts(res, df, casts, range(keys), unit)
        res = res.with_columns(pl.col("_c0").cast(pl.String))
        keep = self._required(res, [("_c0", ent.source_name), ("_c1", tim.source_name)], unit, df)
        res = self._report_casts(res, df, casts, range(keys, len(casts)), unit)
        unit_of = {m.name: m.source_unit or m.unit for m in c.measurements}
        base = [pl.col("_c0").alias("entity"), pl.col("_c1").alias("time")]
        attr_exprs = [pl.col(f"_c{2 + k}").alias(a.name) for k, a in enumerate(attrs)]
        missing_attrs = [pl.lit(None, VALUE_DTYPES[a.logical_type]).alias(a.name) for a in c.attributes if a not in attrs and a.name != lay.row_attribute]
        to_name = {m.source_name: m.name for m in c.measurements}
        if lay.shape == "long":  # unknown sensors are reported on every row, kept or not
            unknown = res.filter(~pl.col("_sensor").is_in(list(to_name)))
            if not unknown.is_empty():
                for ln, sname in unknown.group_by("_sensor").agg(pl.col("_line").min()).select("_line", "_sensor").sort("_line").iter_rows():
                    self.problems.add("schema", f"{unit} {ln}, column {lay.sensor_column!r}: {sname!r} is not a measurement of the contract (expected {sorted(to_name)})")
        if not keep.all():
            res = res.filter(keep)
        if lay.shape == "long":
            sensor = pl.col("_sensor").replace_strict(to_name, default=None)
            out = res.select(
                *base,
                sensor.alias("sensor"),
                pl.col(f"_c{keys}").alias("raw_value"),
                pl.when(pl.col("raw_unit").is_null() | (pl.col("raw_unit") == ""))
                .then(sensor.replace_strict(unit_of, default=None))
                .otherwise(pl.col("raw_unit")).alias("raw_unit"),
                *attr_exprs, *missing_attrs,
            ).filter(pl.col("sensor").is_not_null())
        else:  # wide
            values = [pl.col(f"_c{keys + k}").alias(m.name) for k, m in enumerate(meas)]
            out = res.select(*base, *attr_exprs, *missing_attrs, *values).unpivot(
                index=["entity", "time", *[a.name for a in c.attributes if a.name != lay.row_attribute]],
                on=[m.name for m in meas], variable_name="sensor", value_name="raw_value",
            ).with_columns(raw_unit=pl.col("sensor").replace_strict(unit_of, default=None))
        return out.select(list(long_schema(c))).cast(long_schema(c))  # type: ignore[arg-type]

    def _matrix_values(self, df: pl.DataFrame, samples: list[str], unit: str) -> pl.DataFrame:
        """A matrix block as (_line, _sample, raw_value): unpivoted first, then cast as one column.

        Casting thousands of sample columns one by one paid a fixed overhead
        per column, seconds for a few rows of a high-rate file; one cast of
        the long column is cheap (measured in docs/performance.md, "Why the
        code is as it is"). Bad values are reported as before: by
        sample column, then line (the unpivot's order).
        """
        long = df.select("_line", *samples).unpivot(index="_line", on=samples, variable_name="_sample", value_name="_text")
        if long.schema["_text"] != pl.String:
            return long.with_columns(pl.col("_text").cast(pl.Float64, strict=False).alias("raw_value")).drop("_text")
        text = pl.col("_text").str.strip_chars()
        present = text != ""
        if self.missing_tokens:
            present = present & ~text.is_in(self.missing_tokens)
        res = long.with_columns(_s=pl.when(present).then(text)).with_columns(raw_value=pl.col("_s").cast(pl.Float64, strict=False))
        bad = res.filter(pl.col("_s").is_not_null() & pl.col("raw_value").is_null())
        for ln, col, v in bad.head(MAX_DETAILED).select("_line", "_sample", "_s").iter_rows():
            self.problems.add("logicalType number", f"{unit} {ln}, column {col!r}: {str(v)[:60]!r} is not a number")
        if bad.height > MAX_DETAILED:
            self.problems.counts["logicalType number"] += bad.height - MAX_DETAILED
        return res.select("_line", "_sample", "raw_value")

    def _matrix_long(self, values: pl.DataFrame) -> pl.DataFrame:
        c, lay = self.c, self.lay
        samples = values.get_column("_sample").unique().to_list() if values.height else []
        spr, rate = lay.samples_per_row or len(samples), lay.sample_rate_hz or 1.0
        m = next(x for x in c.measurements if x.name == self._matrix_sensor)
        first_line = 2 if lay.header else 1
        long = values.with_columns(_row=pl.col("_line") - first_line + 1).select(
            "_row", "_sample", "raw_value").with_columns(_idx=pl.col("_sample").str.slice(1).cast(pl.Int64))
        # Sample n of the file lies n / rate seconds after the first, in
        # microseconds; the time axis then counts in its own step
        # (``Layout.time_tick_us``: microseconds for a timestamp, the time
        # column's unit for an integer). Rounding to whole seconds gave a
        # 12 kHz file 11 times for 120,000 samples (issue 23).
        n = (pl.col("_row") - 1) * spr + pl.col("_idx")
        t_us = n.cast(pl.Float64) * (1e6 / rate)
        if c.time.logical_type == "timestamp":
            time = (pl.lit(_start_us(lay.start, lay.timezone), pl.Int64) + t_us.round(0).cast(pl.Int64)).cast(pl.Datetime("us", "UTC"))
        else:
            time = (t_us / lay.time_tick_us).round(0).cast(pl.Int64)
        cols = {
            "entity": pl.lit(lay.entity_value or "unknown", pl.String),
            "time": time,
            "sensor": pl.lit(m.name, pl.String),
            "raw_value": pl.col("raw_value"),
            "raw_unit": pl.lit(m.source_unit or m.unit, pl.String),
        }
        for a in c.attributes:
            cols[a.name] = pl.col("_row") if a.name == lay.row_attribute else pl.lit(None, VALUE_DTYPES[a.logical_type])
        out = long.sort("_row", "_idx").select([e.alias(k) for k, e in cols.items()])
        return out.cast(long_schema(c))  # type: ignore[arg-type]


def _start_us(start: str | None, timezone: str) -> int:
    """Epoch microseconds of a matrix layout's ``start`` (naive: in the layout's time zone); 0 without one."""
    if not start:
        return 0
    import datetime as dt
    import zoneinfo

    t = dt.datetime.fromisoformat(start)
    if t.tzinfo is None:
        t = t.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def read_all(contract: Contract, path: Path, name: str, sniffed: Sniffed) -> tuple[pl.DataFrame, TimeseriesReader]:
    """Whole file as one frame (tests and small files)."""
    r = TimeseriesReader(contract, path, name, sniffed)
    frames = list(r.batches())
    df = pl.concat(frames) if frames else pl.DataFrame(schema=long_schema(contract))
    return df, r


__all__ = ["Problems", "TimeseriesReader", "io", "long_schema", "read_all"]
