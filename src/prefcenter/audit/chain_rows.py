"""Owns how verification reads the audit chain: every event's row with its evidence document
and free text, in `seq` order, a chunk at a time in constant memory, with the database's own
check that the columns are what the canonical bytes say (the fast path), and the check in
Python that decides (`columns_differ`)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import NullPool

from prefcenter.audit.canonical import (
    FREE_TEXT_DIGESTS,
    FREE_TEXT_FIELDS,
)
from prefcenter.audit.column_sql import (
    COLUMNS,
    NULL,
    PICK,
    SORTED_KEYS,
    TIMES,
    column_sql,
    pg_same_sql,
    sqlite_json_sql,
)
from prefcenter.driver import DriverCursor, PostgresCursor, driver_cursor, postgres_cursor
from prefcenter.engines import session_options
from prefcenter.settings import Settings

CHUNK = 20_000

# SQLite's chunk's row: canonical, hash, document, seq, evidence_digest, whether the
# database finds the columns to be what the canonical bytes say, then the chain's digests of
# the free text (FREE_TEXT_DIGESTS order). The database checks the columns by writing them as
# JSON itself, keys in sorted order, in the format the bytes end in (the columns of the other
# format must be null), and comparing that with the bytes: PostgreSQL's `to_json(text)` and
# SQLite's `json_object` escape strings exactly as RFC 8785 does (short escapes for \b \t \n
# \f \r, `\u00xx` for the other control characters, the rest as it is), and the times are
# formatted as `format_time` does. An event it finds to differ is checked again in Python
# (`columns_differ`) before it is called bad: the SQL is the fast path, not the judge. On
# PostgreSQL that check runs apart (`ColumnCheck`) and its rows do not say it. One query
# read in chunks on SQLite. The free text of a chunk's events is read
# apart, a range of `audit_free_text` by seq, and matched to its events in Python: a join
# would cost SQLite a b-tree probe for every event, with free text or without.
_DIGESTS_SQL = ", ".join(f"e.{name}" for name in FREE_TEXT_DIGESTS)
# PostgreSQL: one query over the whole chain, streamed (`stream_events`), the evidence and
# the free text joined in (merge joins over the three primary keys): the server reads and
# sends while Python checks what came before, on the other core.
_PG_STREAM = (
    "SELECT e.canonical, e.hash, d.document, e.seq, e.evidence_digest, "  # noqa: S608
    f"{_DIGESTS_SQL}, f.seq IS NOT NULL, {', '.join(f'f.{n}' for n in FREE_TEXT_FIELDS)} "
    "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
    "LEFT JOIN audit_free_text f ON f.seq = e.seq ORDER BY e.seq"
)
# Rows a result of the stream holds (libpq's chunked rows; the server sends without waiting
# for them). A result of some 200 KB is parsed while it is still in the CPU's cache, and its
# memory is reused by the next one; one of 20 MB (20,000 rows) was not, and glibc gave it
# back to the system and faulted it in again for every result. 1M events, the walk's CPU:
# ~2.65 s at 200 or 500 rows, ~3.1 at 1,000 or 2,000, ~3.2 at 20,000; the stream's server
# CPU ~1.75 s against ~1.9 s (bench/audit_verify.py). Much smaller results cost a call more
# each, for no gain (100 rows: as 200).
_STREAM_ROWS = 200
_SQLITE_ALL = (
    "SELECT e.canonical, e.hash, d.document, e.seq, e.evidence_digest, "  # noqa: S608
    f"{{json}} = e.canonical, {_DIGESTS_SQL} "
    "FROM audit_event e LEFT JOIN audit_evidence d ON d.seq = e.seq "
    "WHERE e.seq > 0 ORDER BY e.seq"
)
_FREE_TEXT = (
    f"SELECT seq, {', '.join(FREE_TEXT_FIELDS)} FROM audit_free_text "  # noqa: S608
    "WHERE seq > {placeholder} AND seq <= {placeholder}"
)
_ONE = "SELECT {columns} FROM audit_event e WHERE e.seq = {placeholder}"


# A chunk: its events' rows, and the free text of those of them that have a row in
# `audit_free_text`, by seq.
Chunk = tuple[list[Any], dict[int, tuple[str | None, ...]]]


def _free_texts(
    cursor: DriverCursor, sql: str, rows: list[Any]
) -> dict[int, tuple[str | None, ...]]:
    """The free text of the events in `rows` (those after the seq before the first up to the
    last: the events are checked gap-free), by seq."""
    cursor.execute(sql, (rows[0][3] - 1, rows[-1][3]))
    # One name a field (FREE_TEXT_FIELDS, two), as the walk unpacks their digests.
    return {seq: (campaign_id, reason) for seq, campaign_id, reason in cursor.fetchall()}


def read_chunks(connection: Connection) -> Iterator[Chunk]:
    """Every event with its evidence document and free text, in seq order, a chunk at a
    time (SQLite; PostgreSQL streams its rows: `stream_events`)."""
    texts_sql = _FREE_TEXT.format(placeholder="?")
    with (
        closing(driver_cursor(connection)) as cursor,
        closing(driver_cursor(connection)) as texts_cursor,
    ):
        cursor.execute(_SQLITE_ALL.format(json=sqlite_json_sql()))
        while rows := cursor.fetchmany(CHUNK):
            yield rows, _free_texts(texts_cursor, texts_sql, rows)


def export_snapshot(connection: Connection) -> str:
    """The id of the connection's snapshot, for other connections to read in it
    (`SET TRANSACTION SNAPSHOT`) while its transaction lasts."""
    return str(connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())


@contextmanager
def readers(settings: Settings) -> Iterator[Engine]:
    """The engine of the verification's other readers (the column check, the chain's
    stream), its connections outside the service's pool: with the verifying one that is
    three at once, more than a pool of one (`db_pool_size`, as many overflowing) gives."""
    engine = create_engine(
        settings.database_url,
        poolclass=NullPool,
        connect_args={"options": session_options(settings)},
    )
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def in_snapshot(engine: Engine, snapshot: str) -> Iterator[PostgresCursor]:
    """A cursor on a connection of its own, read only, in `snapshot`."""
    with engine.connect() as connection:
        other = connection.execution_options(isolation_level="REPEATABLE READ")
        try:
            with closing(postgres_cursor(other)) as cursor:
                # First in the transaction, as the server requires; an id the server made.
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                cursor.execute("SET TRANSACTION READ ONLY")
                # One statement over the whole chain, as long as the walk: a timeout meant
                # for requests (`db_statement_timeout_s`) would end any long verification.
                cursor.execute("SET LOCAL statement_timeout = 0")
                yield cursor
        finally:
            other.rollback()


@contextmanager
def stream_events(engine: Engine, snapshot: str) -> Iterator[Generator[tuple[Any, ...]]]:
    """PostgreSQL: every event, in seq order, on a connection of its own in `snapshot` (the
    verifying one stays free for its look-ups): canonical, hash, document, seq,
    evidence_digest, the chain's digests of the free text (FREE_TEXT_DIGESTS order), whether
    the event has a row of free text, and its fields (FREE_TEXT_FIELDS order). One query
    streamed, not a query a chunk: the server reads and sends the next rows while Python
    checks the last (a chunk's query waited for the server, then the server for Python).
    psycopg's own iterator, not one around it: a generator more a row was some 0.1 s of
    Python's CPU per 1M events. Leaving early cancels the query."""
    with in_snapshot(engine, snapshot) as cursor:
        # A generator, though psycopg annotates an Iterator: closing it cancels the query.
        rows = cast(
            Generator[tuple[Any, ...]],
            cursor.stream(_PG_STREAM, binary=True, size=_STREAM_ROWS),
        )
        try:
            yield rows
        finally:
            rows.close()


# Every event whose columns PostgreSQL finds to differ from its canonical bytes (see above),
# in one pass over the table: a sequential scan, in no order (`_differing` sorts the few it
# finds; `ORDER BY` had the planner walk the primary key's index over every event, some
# 0.2 s more of the server's CPU per 1M).
_PG_DIFFERING = "SELECT e.seq FROM audit_event e WHERE NOT coalesce({same}, false)"


class ColumnCheck:
    """The database's column check of every event (PostgreSQL), on a second connection in the
    same snapshot as the chain's read (`pg_export_snapshot`, `SET TRANSACTION SNAPSHOT`), in
    a thread of its own: the server writes the JSON of every event on one core while the
    other reads the chain's pages and Python hashes them. `differing()` waits for the seqs
    it found to differ, which the caller checks again in Python (`columns_differ`)."""

    def __init__(self, engine: Engine, snapshot: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-columns")
        self._found = self._pool.submit(_differing, engine, snapshot)

    def differing(self) -> list[int]:
        try:
            return self._found.result()
        finally:
            self._pool.shutdown()


def _differing(engine: Engine, snapshot: str) -> list[int]:
    with in_snapshot(engine, snapshot) as cursor:
        cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        # Compiling the check's expression (JIT) cost more than it saved: 4.4 against 3.6 s
        # of the server's CPU per 1M events.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute("SET LOCAL client_encoding = 'UTF8'")  # pg_same_sql's `textsend`
        cursor.execute(_PG_DIFFERING.format(same=pg_same_sql()))
        return sorted(seq for (seq,) in cursor.fetchall())


def canonical_of(cursor: DriverCursor, dialect: str, seq: int) -> bytes:
    """The stored canonical bytes of one event."""
    placeholder = "%s" if dialect == "postgresql" else "?"
    row = cursor.execute(
        f"SELECT canonical FROM audit_event WHERE seq = {placeholder}",  # noqa: S608
        (seq,),
    ).fetchone()
    if row is None:  # read in this snapshot a moment ago
        raise RuntimeError(f"audit event {seq} vanished from the snapshot")
    return bytes(row[0])


def row_columns(cursor: DriverCursor, dialect: str, seq: int) -> list[Any]:
    """The columns of one event, as `columns_differ` compares them."""
    columns = ", ".join(column_sql(name, dialect) for name in COLUMNS)
    placeholder = "%s" if dialect == "postgresql" else "?"
    row = cursor.execute(_ONE.format(columns=columns, placeholder=placeholder), (seq,)).fetchone()
    if row is None:  # read in this snapshot a moment ago
        raise RuntimeError(f"audit event {seq} vanished from the snapshot")
    return list(row)


def columns_differ(canonical: bytes, columns: list[Any], *, parse_times: bool) -> str | None:
    """How the columns (in `COLUMNS` order) differ from the values of the canonical object, in
    its format (those its format has no key for must be null); None when they do not."""
    try:
        decoded = orjson.loads(canonical)
        version = decoded["v"]
        keys = SORTED_KEYS.get(version) if type(version) is int else None
        if keys is None or [*decoded] != keys:
            return "its canonical bytes are not an event"
        values = [decoded[key] for key in keys[:-1]]
        if parse_times:  # PostgreSQL hands out datetimes
            for i, key in enumerate(keys[:-1]):
                if key in TIMES:
                    values[i] = datetime.fromisoformat(values[i])
    except (ValueError, TypeError, KeyError, IndexError):
        return "its canonical bytes are not an event"
    if values != [columns[i] for i in PICK[version]] or any(
        columns[i] is not None for i in NULL[version]
    ):
        return "its columns differ from its canonical bytes"
    return None
