"""Owns making CSV cells safe to open in a spreadsheet (CSV/formula injection)."""

from __future__ import annotations

# The one list: the Python writers, the stream's fast path and the SQL-built exports use it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet would read as a formula gets a leading `'`; others are unchanged."""
    if cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell
