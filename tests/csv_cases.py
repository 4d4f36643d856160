"""Texts that exercise every branch of a CSV cell writer, and what Python's csv module writes."""

from __future__ import annotations

import csv
import io

# Texts that exercise every branch: formulas, quotes, commas, line breaks, non-ASCII.
AWKWARD_CELLS = (
    "",
    "ada@example.com",
    '=HYPERLINK("http://x")',
    "+1",
    "-x@example.com",
    "@sum",
    "\tx",
    "\rx",
    'a"b',
    "a,b",
    "a\r\nb",
    "a\nb",
    "'=already",
    " =x",
    "zoë@exämple.com",
)


def python_csv(*cells: str) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()
