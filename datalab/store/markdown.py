"""Markdown written from firms' values: the card, the datasheet and the kinds' card sections share it.

Below the card (which asks the kinds' registry for a version's section), so
that the kinds' own sections can use it without importing the registry back.
"""

from __future__ import annotations


def cell(v: object) -> str:
    """``v`` as one Markdown table cell: a ``|`` in a firm's value (a machine id, a file name) would split the
    cell and shift every column after it, and a line break would end the row; both are written as text."""
    s = str(v)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
