"""Tables for the CLI that never cut an id.

Rich fits a table to the console by cutting cells (``urn:da…``,
``d-202612…``); an id cut that way cannot be copied into the next command.
Here the id columns keep their full width and never wrap, the other columns
fold onto more lines, and when even that does not fit (a narrow terminal, or
80 columns in a pipe) every record is printed as its own block of
``column: value`` lines. ``--json`` remains the form for machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

MIN_OTHER = 6  # the narrowest a folded column may become before records are printed as blocks


def print_table(console: Console, columns: Sequence[str], rows: Iterable[Sequence[str]],
                ids: Iterable[str] = (), title: str | None = None) -> None:
    """Print ``rows`` under ``columns``; the columns named in ``ids`` are never truncated or wrapped."""
    rows = [[str(c) for c in r] for r in rows]
    id_cols = set(ids)
    widths = [max([len(columns[i])] + [len(r[i]) for r in rows]) for i in range(len(columns))]
    # borders and padding: "│ " before each cell, " │" after the last (3 per column + 1)
    need = 3 * len(columns) + 1 + sum(
        widths[i] if c in id_cols else min(widths[i], max(MIN_OTHER, len(c))) for i, c in enumerate(columns))
    if need > console.width and rows:
        print_blocks(console, columns, rows, title)
        return
    t = Table(title=title)
    for i, c in enumerate(columns):
        if c in id_cols:
            t.add_column(c, no_wrap=True, min_width=widths[i], overflow="ignore")
        else:
            t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(escape(x) for x in r))
    console.print(t)


def print_blocks(console: Console, columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> None:
    """One record per block: ``column: value`` lines, a blank line between records (nothing is cut)."""
    if title:
        console.print(title, markup=False, highlight=False, soft_wrap=True)
    pad = max(len(c) for c in columns)
    for n, r in enumerate(rows):
        if n:
            console.print()
        for c, v in zip(columns, r, strict=True):
            console.print(f"{c.rjust(pad)}: {v}", markup=False, highlight=False, soft_wrap=True)
