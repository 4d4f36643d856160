"""Owns the appends written straight on the driver: SQLite's whole append, and PostgreSQL's
binary COPY of a large batch (audit.service decides which an append takes)."""

from __future__ import annotations

import hashlib
from contextlib import closing
from typing import Any

from sqlalchemy.orm import Session as OrmSession

from prefcenter.audit.canonical import FREE_TEXT_FIELDS, format_time
from prefcenter.audit.models import HEAD_ID
from prefcenter.audit.prepared import EVENT_INSERT_COLUMNS, PreparedEvent
from prefcenter.db import utcnow
from prefcenter.driver import DriverCursor, driver_cursor, postgres_cursor

# SQLite runs in-process, so its statements cost what the Python around them costs: the driver
# directly, not SQLAlchemy's statement machinery (a third of the append's time otherwise).
# Times are stored as SQLAlchemy stores them there (`UtcDateTime`): naive UTC text.
_ALL_COLUMNS = ("seq", "recorded_at", "canonical", "hash", *EVENT_INSERT_COLUMNS)
_SQLITE_INSERT_EVENT = (
    f"INSERT INTO audit_event ({', '.join(_ALL_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(['?'] * len(_ALL_COLUMNS))})"
)
_SQLITE_INSERT_EVIDENCE = "INSERT INTO audit_evidence (seq, document) VALUES (?, ?)"
_SQLITE_INSERT_FREE_TEXT = (
    f"INSERT INTO audit_free_text (seq, {', '.join(FREE_TEXT_FIELDS)}) "  # noqa: S608
    f"VALUES ({', '.join(['?'] * (1 + len(FREE_TEXT_FIELDS)))})"
)
_OCCURRED = EVENT_INSERT_COLUMNS.index("occurred_at")


def sqlite_time(text: str) -> str:
    """`2026-11-25T15:20:03.123456Z` (format_time) as SQLAlchemy stores it on SQLite."""
    return f"{text[:10]} {text[11:26]}"


def append_sqlite(session: OrmSession, prepared: list[PreparedEvent]) -> None:
    """The writer holds SQLite's write lock since its BEGIN IMMEDIATE: read the head, chain
    the events onto it, insert them, move the head."""
    with closing(driver_cursor(session.connection())) as cursor:
        append_sqlite_on_cursor(cursor, prepared)


def append_sqlite_on_cursor(cursor: DriverCursor, prepared: list[PreparedEvent]) -> None:
    """`append_sqlite` on a sqlite3 cursor whose connection is in a write transaction (BEGIN
    IMMEDIATE): consent.ledger.api_lane_sqlite's, besides the session's."""
    head = cursor.execute(
        f"SELECT seq, hash FROM audit_head WHERE id = {HEAD_ID}"  # noqa: S608
    ).fetchone()
    if head is None:
        raise RuntimeError("the audit head row is missing: the migrations were not run")
    seq, head_hash = head
    recorded_text = format_time(utcnow())
    recorded_at = sqlite_time(recorded_text)
    prev_hash = bytes.fromhex(head_hash)
    sha256 = hashlib.sha256
    events: list[tuple[Any, ...]] = []
    documents: list[tuple[int, bytes]] = []
    free_texts: list[tuple[Any, ...]] = []
    for item in prepared:
        seq += 1
        canonical = item.parts.join(recorded_text, seq)
        prev_hash = sha256(prev_hash + canonical).digest()
        row = item.row
        events.append(
            (
                seq,
                recorded_at,
                canonical,
                prev_hash.hex(),
                *[row[name] for name in EVENT_INSERT_COLUMNS[:_OCCURRED]],
                sqlite_time(item.occurred_text),
                *[row[name] for name in EVENT_INSERT_COLUMNS[_OCCURRED + 1 :]],
            )
        )
        if item.document is not None:
            documents.append((seq, item.document))
        if item.free_text is not None:
            free_texts.append((seq, *item.free_text))
    cursor.executemany(_SQLITE_INSERT_EVENT, events)
    if documents:
        cursor.executemany(_SQLITE_INSERT_EVIDENCE, documents)
    if free_texts:
        cursor.executemany(_SQLITE_INSERT_FREE_TEXT, free_texts)
    cursor.execute(
        f"UPDATE audit_head SET seq = ?, hash = ?, recorded_at = ? WHERE id = {HEAD_ID}",  # noqa: S608
        (seq, prev_hash.hex(), recorded_at),
    )


# From this many events on (an import's batch), PostgreSQL gets them by binary COPY: a few
# µs per row where an executemany costs tens (psycopg pipelines one INSERT per row).
COPY_FROM = 100
_COPYEVENT_INSERT_COLUMNS = ("seq", "recorded_at", "canonical", "hash", *EVENT_INSERT_COLUMNS)
_COPY_EVENT_TYPES = (
    "int8",
    "timestamptz",
    "bytea",
    "text",
    *["timestamptz" if name == "occurred_at" else "text" for name in EVENT_INSERT_COLUMNS],
)


def copy_rows(
    session: OrmSession,
    events: list[dict[str, Any]],
    documents: list[dict[str, Any]],
    free_texts: list[dict[str, Any]],
) -> None:
    with closing(postgres_cursor(session.connection())) as cursor:
        with cursor.copy(
            f"COPY audit_event ({', '.join(_COPYEVENT_INSERT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(_COPY_EVENT_TYPES))
            for row in events:
                copy.write_row([row[name] for name in _COPYEVENT_INSERT_COLUMNS])
        if documents:
            with cursor.copy(
                "COPY audit_evidence (seq, document) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "bytea"])
                for document in documents:
                    copy.write_row((document["seq"], document["document"]))
        if free_texts:
            columns = ("seq", *FREE_TEXT_FIELDS)
            with cursor.copy(
                f"COPY audit_free_text ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", *["text"] * len(FREE_TEXT_FIELDS)])
                for free_text in free_texts:
                    copy.write_row([free_text[name] for name in columns])
