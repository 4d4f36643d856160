"""Owns the appends written straight on the driver: SQLite's whole append, and PostgreSQL's
binary COPY of a large batch (audit.service decides which an append takes)."""

from __future__ import annotations

import hashlib
import struct
from contextlib import closing
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session as OrmSession

from prefcenter.audit.canonical import FREE_TEXT_FIELDS, format_time
from prefcenter.audit.models import HEAD_ID
from prefcenter.audit.prepared import EVENT_INSERT_COLUMNS, PreparedEvent
from prefcenter.db import utcnow
from prefcenter.driver import (
    DriverCursor,
    PostgresCursor,
    driver_cursor,
    postgres_cursor,
    postgres_pipeline,
)
from prefcenter.sqlite_times import sqlite_time

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
_COPY_EVENT_COLUMNS = ("seq", "recorded_at", "canonical", "hash", *EVENT_INSERT_COLUMNS)
_COPY_EVENT_TYPES = (
    "int8",
    "timestamptz",
    "bytea",
    "text",
    *["timestamptz" if name == "occurred_at" else "text" for name in EVENT_INSERT_COLUMNS],
)


def copy_chained(
    session: OrmSession,
    prepared: list[PreparedEvent],
    *,
    seq: int,
    prev_hash: bytes,
    recorded_at: datetime,
) -> None:
    """Chain `prepared` onto the head (`seq` and `prev_hash`: the head's before them; the head
    row locked) and write them, then the new head hash.

    The events go by binary COPY, each row written as soon as its hash is made: psycopg sends
    the rows in chunks as they come, so the server inserts the first while Python hashes the
    next. Their free text follows by COPY. Their evidence documents go in one statement
    beside the head's update, in one round trip (pipeline mode): a batch's events mostly
    share one document (the request's context), so each run of consecutive events with the
    same document is sent once, with the first and last seq it goes with
    (`_INSERT_EVIDENCE_RUNS`), not once per event."""
    recorded_text = format_time(recorded_at)
    sha256 = hashlib.sha256
    runs: list[list[Any]] = []  # [first seq, last seq, document]
    free_texts: list[tuple[Any, ...]] = []
    connection = session.connection()
    with closing(postgres_cursor(connection)) as cursor:
        with cursor.copy(
            f"COPY audit_event ({', '.join(_COPY_EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(_COPY_EVENT_TYPES))
            for item in prepared:
                seq += 1
                canonical = item.parts.join(recorded_text, seq)
                prev_hash = sha256(prev_hash + canonical).digest()
                row = item.row
                copy.write_row(
                    [seq, recorded_at, canonical, prev_hash.hex()]
                    + [row[name] for name in EVENT_INSERT_COLUMNS]
                )
                document = item.document
                if document is not None:
                    last = runs[-1] if runs else None
                    if last is not None and last[1] == seq - 1 and last[2] == document:
                        last[1] = seq
                    else:
                        runs.append([seq, seq, document])
                if item.free_text is not None:
                    free_texts.append((seq, *item.free_text))
        if free_texts:
            columns = ("seq", *FREE_TEXT_FIELDS)
            with cursor.copy(
                f"COPY audit_free_text ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", *["text"] * len(FREE_TEXT_FIELDS)])
                for free_text in free_texts:
                    copy.write_row(free_text)
        if runs and runs[-1][1] - runs[0][0] + 1 == len(runs):
            # Each document is its event's own (an import's: each names its line): sent once
            # each in any form, so as COPY rows, without the runs' arrays to encode and
            # unnest.
            _copy_evidence(cursor, runs)
            runs = []
        with postgres_pipeline(connection):
            if runs:
                firsts, lasts, documents = zip(*runs, strict=True)
                cursor.execute(
                    _INSERT_EVIDENCE_RUNS,
                    {"firsts": list(firsts), "lasts": list(lasts), "documents": list(documents)},
                )
            cursor.execute(_SET_HEAD_HASH, {"hash": prev_hash.hex()})


_BINARY_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_BINARY_COPY_TRAILER = b"\xff\xff"
# A row of two fields: an int8 (eight bytes), then the document's length.
_EVIDENCE_ROW = struct.Struct("!hiqi")


def _copy_evidence(cursor: PostgresCursor, runs: list[list[Any]]) -> None:
    """The runs' documents (one seq each) by binary COPY, its rows packed here: a few hundred
    nanoseconds a row, where the driver's row writer takes microseconds."""
    pack = _EVIDENCE_ROW.pack
    data = [_BINARY_COPY_HEADER]
    for seq, _, document in runs:
        data.append(pack(2, 8, seq, len(document)))
        data.append(document)
    data.append(_BINARY_COPY_TRAILER)
    with cursor.copy("COPY audit_evidence (seq, document) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"".join(data))


# Each run's document once for each seq from its first to its last, in seq order.
_INSERT_EVIDENCE_RUNS = """INSERT INTO audit_evidence (seq, document)
SELECT seq, run.document
FROM unnest(%(firsts)s::int8[], %(lasts)s::int8[], %(documents)s::bytea[])
    AS run (first, last, document),
    generate_series(run.first, run.last) AS seq
ORDER BY seq"""
_SET_HEAD_HASH = f"UPDATE audit_head SET hash = %(hash)s WHERE id = {HEAD_ID}"  # noqa: S608
