"""Side files: labels, timestamps or conditions delivered beside a data file, joined by row number.

The contract's ``layout.side_files`` says which delivered files are side
files (a regular expression on the name) and which of their columns fill
which attribute properties (or the time, ``time.column: NAME.COLUMN``).
Side files are small text tables (one line per row of the data), read
whole with the ``csv`` module, which handles quoted fields and runs of
blanks. A missing side file, two for one role, or one whose row count
differs from the data's rejects the delivery with the counts.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import polars as pl

from datalab.contracts.contract import Contract
from datalab.intake.formats import FileRejected, sniff


def read_side(path: Path, name: str, header: bool, names: tuple[str, ...]) -> pl.DataFrame:
    """A side file as text columns; raises FileRejected naming the file and line."""
    sn = sniff(path, name)
    if sn.format != "delimited" or sn.compression:
        raise FileRejected([f"{name}: a side file must be plain delimited text, it is {sn.format}"])
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FileRejected([f"{name}: byte {e.start} is not UTF-8 (side file)"]) from e
    if sn.delimiter == "whitespace":
        rows = [next(csv.reader([ln.strip()], delimiter=" ", quotechar='"', skipinitialspace=True))
                for ln in text.splitlines() if ln.strip()]
    else:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=sn.delimiter or ",") if any(x.strip() for x in r)]
    cols = list(names) if not header else [h.strip() for h in (rows[0] if rows else [])]
    body = rows[1:] if header else rows
    for i, r in enumerate(body):
        if len(r) != len(cols):
            raise FileRejected([f"{name}: line {i + 1 + (1 if header else 0)}: {len(r)} field(s), the side file has "
                                f"{len(cols)} columns {cols} (rule: side_files)"])
    return pl.DataFrame({c: [r[j].strip() for r in body] for j, c in enumerate(cols)}, schema=dict.fromkeys(cols, pl.String))


def split_side(contract: Contract, staged: list[tuple[str, Path, str, int, bool]]) -> tuple[dict[str, pl.DataFrame], dict[int, Any], list[str]]:
    """(side tables by role, receipts of the side files by staged position, reasons) for one delivery."""
    from datalab.intake.receipts import FileReceipt

    ml = contract.layout.measurement
    tables: dict[str, pl.DataFrame] = {}
    receipts: dict[int, Any] = {}
    reasons: list[str] = []
    for sf in ml.side_files:
        hits = [i for i, (name, *_rest) in enumerate(staged) if re.search(sf.match, name)]
        if len(hits) != 1:
            reasons.append(
                f"side file {sf.name!r}: the delivery holds {len(hits)} file(s) whose name matches {sf.match!r}, "
                f"layout.side_files needs exactly 1 (files: {[s[0] for s in staged]}) (rule: side_files)")
            continue
        i = hits[0]
        name, path, _sha, size, over = staged[i]
        fr = FileReceipt(name=name, sha256="", bytes=size, rows=None, format=f"side file ({sf.name})", compression=None)
        receipts[i] = fr
        if over:
            fr.reasons.append(f"{name}: {size:,} bytes exceeds the contract's limit (rule: limits.max_file_bytes)")
            continue
        try:
            frame = read_side(path, name, sf.header, sf.names)
        except FileRejected as e:
            fr.reasons += e.reasons
            continue
        missing = [c for _, c in sf.columns if c not in frame.columns]
        if missing:
            fr.reasons.append(f"{name}: side file {sf.name!r} has no column(s) {missing} (it has {frame.columns}) (rule: side_files)")
            continue
        fr.rows = len(frame)
        tables[sf.name] = frame
    if len(receipts) == len(staged) and staged:
        reasons.append(f"the delivery holds only side files ({[s[0] for s in staged]}), no data file (rule: side_files)")
    return tables, receipts, reasons
