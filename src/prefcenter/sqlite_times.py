"""Owns a time's text as the `db.UtcDateTime` column stores it on SQLite (SQLAlchemy's text of
naive UTC, `2026-11-25 15:20:03.123456`), for SQL written straight on sqlite3."""

from __future__ import annotations

from datetime import UTC, datetime


def sqlite_time(text: str) -> str:
    """`2026-11-25T15:20:03.123456Z` (RFC 3339 in UTC with microseconds, as
    `audit.canonical.format_time` writes it) as the column stores it."""
    return f"{text[:10]} {text[11:26]}"


def sqlite_text(value: datetime) -> str:
    """A time as the column stores it."""
    return sqlite_time(value.astimezone(UTC).isoformat(timespec="microseconds"))


def from_sqlite_text(text: str) -> datetime:
    """A time as sqlite3 returns the column, read as `UtcDateTime` reads it."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
