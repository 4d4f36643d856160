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
    CANONICAL_VERSION,
    EVENT_COLUMNS,
    EVENT_KEYS,
    FREE_TEXT_DIGESTS,
    FREE_TEXT_FIELDS,
)
from prefcenter.driver import DriverCursor, PostgresCursor, driver_cursor, postgres_cursor
from prefcenter.engines import session_options
from prefcenter.settings import Settings

CHUNK = 20_000

# A format's canonical keys in the object's own (sorted) order: `orjson.loads` of the stored
# bytes gives its values in this order.
SORTED_KEYS = {v: [*sorted((*keys, "v"))] for v, keys in EVENT_KEYS.items()}
# Every column that holds a canonical value, in sorted order (`row_columns`).
_COLUMNS = tuple(sorted(EVENT_COLUMNS))
# Where each format's values are among `_COLUMNS`, and which columns must be null in it.
_PICK = {v: [_COLUMNS.index(k) for k in keys[:-1]] for v, keys in SORTED_KEYS.items()}
_NULL = {v: [i for i, k in enumerate(_COLUMNS) if k not in keys] for v, keys in SORTED_KEYS.items()}
_TIMES = ("occurred_at", "recorded_at")
# The stored bytes end in `"v":N}`: which format's JSON the SQL compares them with.
_SUFFIXES = {v: b'"v":%d}' % v for v in EVENT_KEYS}
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


def _column_sql(name: str, dialect: str) -> str:
    """A column as `columns_differ` compares it: SQLAlchemy keeps SQLite times as
    `YYYY-MM-DD HH:MM:SS.ffffff` UTC text; PostgreSQL's are datetimes, null for one that
    Python cannot hold (BC, or past 9999), which psycopg refuses to read: no time of the
    bytes is null, and the event differs."""
    if name not in _TIMES:
        return f"e.{name}"
    if dialect != "postgresql":
        return f"replace(e.{name}, ' ', 'T') || 'Z'"
    return f"CASE WHEN e.{name} >= {_TIME_FROM} AND e.{name} < {_TIME_BEFORE} THEN e.{name} END"


def _by_format(json_of: dict[int, str], dialect: str) -> str:
    """The expression (`json_of`) of the format whose `"v":N}` the stored bytes end in, null
    when a column that format has no key for is not (the Python check then names the
    event)."""
    last = (
        "substr(e.canonical, -6)"
        if dialect != "postgresql"
        else "substring(e.canonical FROM octet_length(e.canonical) - 5)"
    )
    cases = []
    # The format written now first: most events are in it, and each other format asked
    # before it costs every such event a comparison.
    for version, json in sorted(json_of.items(), key=lambda item: item[0] != CANONICAL_VERSION):
        others_null = " AND ".join(f"e.{_COLUMNS[i]} IS NULL" for i in _NULL[version])
        suffix = _SUFFIXES[version].hex()
        literal = f"X'{suffix}'" if dialect != "postgresql" else f"'\\x{suffix}'::bytea"
        cases.append(f"WHEN {last} = {literal} AND {others_null} THEN {json}")
    return f"CASE {' '.join(cases)} END"


def _pg_json_of() -> dict[int, str]:
    """Each format's canonical bytes as PostgreSQL writes them from the columns (as text),
    every string through `to_json`."""
    json_of = {}
    for version, keys in SORTED_KEYS.items():
        parts: list[str] = []
        literal = "{"
        for name in keys[:-1]:
            literal += f'"{name}":' if literal == "{" else f',"{name}":'
            if name in _TIMES:
                parts += [_pg_literal(literal + '"'), _pg_time(name)]
                literal = '"'
            elif name == "seq":
                parts += [_pg_literal(literal), "e.seq::text"]
                literal = ""
            else:
                parts += [_pg_literal(literal), f"coalesce(to_json(e.{name})::text, 'null')"]
                literal = ""
        parts.append(_pg_literal(literal + f',"v":{version}}}'))
        json_of[version] = _pg_concat(parts)
    return json_of


def pg_json_sql() -> str:
    """The canonical bytes as PostgreSQL writes them from the columns, every string through
    `to_json` (`pg_same_sql` asks it only where plain concatenation cannot tell)."""
    return _by_format(_pg_json_of(), "postgresql")


# The times Python holds (years 1 to 9999), as PostgreSQL compares them (UTC). `to_char`
# writes a year BC as the same digits as the year AD; psycopg reads neither a year BC nor one
# past 9999.
_TIME_FROM = "'0001-01-01 00:00:00+00'::timestamptz"
_TIME_BEFORE = "'10000-01-01 00:00:00+00'::timestamptz"


def _pg_time(name: str) -> str:
    """The time as `format_time` writes it; null (the event differs) for a time BC, which
    `to_char` would write as the same time AD."""
    return (
        f"CASE WHEN e.{name} >= {_TIME_FROM} THEN "
        f"""to_char(e.{name} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END"""
    )


# Columns the table holds as NOT NULL: their quotes go into the literal around them (a null,
# were there one, makes the plain JSON null, and the event takes the `to_json` way).
_REQUIRED = frozenset(("id", "kind", "outcome", "actor", "source"))
# The length of `_pg_time`'s text, `YYYY-MM-DDTHH:MI:SS.ffffffZ`, for times before
# `_TIME_BEFORE` (later years have more digits).
_TIME_LENGTH = 27


def pg_same_sql() -> str:
    """Whether PostgreSQL finds the columns to be what the canonical bytes say (null: it
    could not tell, which the caller takes as "they differ").

    Two ways to the same answer. `_pg_json_of` escapes every string with `to_json`, some
    sixteen calls an event. Most events have no string that JSON escapes (no `"`, no `\\`,
    no control character): then `to_json(x)` is `'"' || x || '"'`, and the bytes can be
    written with plain concatenation, one `to_json` over all the strings at once telling
    whether that holds (it adds exactly the two quotes around them then, and at least one
    more character for each character it escapes). An event for which the plain way does not
    find them equal is asked the `to_json` way: the answer is the same as that way's alone
    (tests/audit/test_column_check.py), for some 30 % less of the server's CPU over 1M
    events (bench/audit_verify.py).

    The strings' length is not measured apart: where the plain bytes are the stored ones, it
    is the stored bytes' length less what the plain way writes around the strings (the
    literals, the times, the seq, two quotes or a `null` a nullable column). A time longer
    than `_TIME_LENGTH` (a year past 9999) would make them seem longer than they are, by as
    much as an escape adds: such an event takes the `to_json` way (`_TIME_BEFORE`).

    The plain bytes are the text's as the session's `client_encoding` writes them
    (`textsend`: no conversion where that is the database's, where `convert_to` checks the
    text it has made over again): the session must write UTF-8 (`_differing` says so)."""
    json_of = _pg_json_of()
    same_of = {}
    for version, keys in SORTED_KEYS.items():
        parts: list[str] = []
        literal = "{"
        strings: list[str] = []
        nullable: list[str] = []
        written = 0  # what the plain way writes beside the strings, nulls apart
        for name in keys[:-1]:
            literal += f'"{name}":' if literal == "{" else f',"{name}":'
            if name in _TIMES:
                parts += [_pg_literal(literal + '"'), _pg_time(name)]
                written += len(literal) + 1 + _TIME_LENGTH
                literal = '"'
            elif name == "seq":
                parts += [_pg_literal(literal), "e.seq::text"]
                written += len(literal)
                literal = ""
            elif name in _REQUIRED:
                parts += [_pg_literal(literal + '"'), f"e.{name}"]
                written += len(literal) + 1
                literal = '"'
                strings.append(f"e.{name}")
            else:  # the literal before it goes into both ways of writing it
                quoted = _pg_literal(literal + '"')
                parts.append(
                    f"""coalesce({quoted} || e.{name} || '"', {_pg_literal(literal + "null")})"""
                )
                written += len(literal) + 2  # its quotes; a null writes two characters more
                literal = ""
                strings.append(f"coalesce(e.{name}, '')")
                nullable.append(f"e.{name}")
        literal += f',"v":{version}}}'
        parts.append(_pg_literal(literal))
        written += len(literal)
        # `to_json` of the strings adds its two quotes (and one or more characters for each
        # character it escapes) to their length.
        escapes_none = (
            f"octet_length(to_json({_pg_concat(strings)})::text) = "
            f"octet_length(e.canonical) - {written - 2} - octet_length(e.seq::text) "
            f"- 2 * num_nulls({', '.join(nullable)})"
        )
        times_fit = " AND ".join(f"e.{name} < {_TIME_BEFORE}" for name in _TIMES)
        same_of[version] = (
            f"CASE WHEN textsend({_pg_concat(parts)}) = e.canonical "
            f"AND {times_fit} AND {escapes_none} "
            f"THEN true ELSE convert_to({json_of[version]}, 'UTF8') = e.canonical END"
        )
    return _by_format(same_of, "postgresql")


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pg_concat(parts: list[str]) -> str:
    """`parts` joined by `||` as a balanced tree: each `||` copies both its sides, so a
    chain copies its first parts once for every part after them, a tree once per level
    (some 10 % less of the column check's CPU)."""
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_pg_concat(parts[:middle])} || {_pg_concat(parts[middle:])})"


def _sqlite_json_sql() -> str:
    """The canonical bytes as SQLite writes them from the columns (as a blob)."""
    json_of = {}
    for version, keys in SORTED_KEYS.items():
        pairs = ", ".join(f"'{name}', {_column_sql(name, 'sqlite')}" for name in keys[:-1])
        json_of[version] = f"CAST(json_object({pairs}, 'v', {version}) AS BLOB)"
    return _by_format(json_of, "sqlite")


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
        cursor.execute(_SQLITE_ALL.format(json=_sqlite_json_sql()))
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
    columns = ", ".join(_column_sql(name, dialect) for name in _COLUMNS)
    placeholder = "%s" if dialect == "postgresql" else "?"
    row = cursor.execute(_ONE.format(columns=columns, placeholder=placeholder), (seq,)).fetchone()
    if row is None:  # read in this snapshot a moment ago
        raise RuntimeError(f"audit event {seq} vanished from the snapshot")
    return list(row)


def columns_differ(canonical: bytes, columns: list[Any], *, parse_times: bool) -> str | None:
    """How the columns (in `_COLUMNS` order) differ from the values of the canonical object, in
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
                if key in _TIMES:
                    values[i] = datetime.fromisoformat(values[i])
    except (ValueError, TypeError, KeyError, IndexError):
        return "its canonical bytes are not an event"
    if values != [columns[i] for i in _PICK[version]] or any(
        columns[i] is not None for i in _NULL[version]
    ):
        return "its columns differ from its canonical bytes"
    return None
