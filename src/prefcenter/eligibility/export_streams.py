"""Owns which path the suppression and audience exports take, and their PostgreSQL path: the
CSV text is written by the database (`COPY (SELECT …) TO STDOUT`), one range of contact ids per
query, so Python only joins bytes (SQLite streams `exports`' keyset chunks).

Each range (`contact.id` in `(low, low + EXPORT_RANGE]`) is one COPY in a short read
transaction of its own, in id order: memory is bounded by the range's width, no snapshot is
held for the length of a download, and (as on SQLite) the export as a whole is not one
snapshot. Two ranges are in flight at once, so the database works on the next while the last
is sent. The same cells as `exports._csv_text` writes: spreadsheet-safe (`csv_cells`) and
quoted as Python's csv module quotes, rows ended by CRLF.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal,
    select,
    text,
    true,
)
from sqlalchemy.orm import Mapped
from sqlalchemy.sql import ClauseElement
from sqlmodel import Session, col

from prefcenter.consent.models import Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.eligibility.exports import (
    AUDIENCE_HEADER,
    SUPPRESSIONS_HEADER,
    SuppressionReason,
    _address,
    _allowed_where,
    _csv_text,
    _topic_model,
    audience_reader,
    read_suppressions,
    stream_csv,
)
from prefcenter.topics.models import Topic

# Contact ids per query: at ~60 bytes a row, a few megabytes of CSV text at most.
EXPORT_RANGE = 100_000
_IN_FLIGHT = 2
_FORMULA_CODES = tuple(ord(start) for start in ("=", "+", "-", "@", "\t", "\r"))

RangeQuery = Callable[[int, int], ClauseElement]
# A column as the models give it, or an expression over columns.
Sql = ColumnElement[Any] | Mapped[Any]


def csv_cell_sql(value: Sql) -> ColumnElement[str]:
    """SQL for `csv_cells.spreadsheet_safe(value)`; COPY's CSV format then quotes the cell
    exactly where Python's csv module would (a delimiter, quote, CR or LF in it)."""
    # The first character's code point: an integer comparison, far cheaper per row than text.
    return case((func.ascii(value).in_(_FORMULA_CODES), literal("'") + value), else_=value)


def _timestamp_sql(value: Sql) -> ColumnElement[str]:
    """SQL for `exports._timestamp`: RFC 3339 in UTC, microseconds only when not zero."""
    utc = func.timezone("UTC", value)
    fraction = case((func.to_char(utc, "US") == "000000", ""), else_=func.to_char(utc, ".US"))
    return func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS') + fraction + "Z"


def _suppressions_range(low: int, high: int) -> Select[str, str, str]:
    reason = literal(SuppressionReason.UNSUBSCRIBED_ALL.value)
    return (
        select(csv_cell_sql(_address()), reason, _timestamp_sql(col(Suppression.since)))
        .select_from(Contact)
        .join(Suppression, col(Suppression.contact_id) == col(Contact.id))
        .where(
            # The range on both sides of the join, so that each is read from its key index.
            col(Suppression.contact_id) > low,
            col(Suppression.contact_id) <= high,
            col(Contact.id) > low,
            col(Contact.id) <= high,
            col(Suppression.suppressed) == true(),
            col(Contact.erased_at).is_(None),
            col(Contact.address).is_not(None),
        )
        .order_by(col(Suppression.contact_id))
    )


def _audience_range(topic: Topic) -> RangeQuery:
    model = _topic_model(topic)

    def query(low: int, high: int) -> Select[str, str]:
        suppressed = (
            select(col(Suppression.contact_id))
            .where(
                col(Suppression.contact_id) == col(Contact.id),
                # The range on every table read, so that each is read from its key index.
                col(Suppression.contact_id) > low,
                col(Suppression.contact_id) <= high,
                col(Suppression.suppressed),
            )
            .exists()
        )
        allowed, needs_no_row = _allowed_where(model, suppressed, col(Subscription.status))
        on_topic = and_(
            col(Subscription.contact_id) == col(Contact.id),
            col(Subscription.topic_id) == topic.id,
            col(Subscription.contact_id) > low,
            col(Subscription.contact_id) <= high,
        )
        base = select(csv_cell_sql(_address()), csv_cell_sql(col(Contact.public_id)))
        base = base.select_from(Contact)
        base = (
            base.outerjoin(Subscription, on_topic)
            if needs_no_row
            else base.join(Subscription, on_topic)
        )
        return base.where(
            col(Contact.id) > low,
            col(Contact.id) <= high,
            col(Contact.erased_at).is_(None),
            col(Contact.address).is_not(None),
            allowed,
        ).order_by(col(Contact.id))

    return query


def _read_range(database: Database, query: RangeQuery, low: int) -> tuple[bytes, int]:
    """One range's CSV rows, and the highest contact id there is (where the export ends)."""
    with database.transaction(write=False) as session:
        connection = session.connection()
        # Compiling the query to machine code (JIT) costs more than running it on one range.
        connection.execute(text("SET LOCAL jit = off"))
        # COPY takes no parameters; every literal is an integer or a constant of this module.
        statement = query(low, low + EXPORT_RANGE).compile(
            dialect=connection.dialect, compile_kwargs={"literal_binds": True}
        )
        dbapi: Any = connection.connection.driver_connection
        parts: list[bytes] = []
        with (
            dbapi.cursor() as cursor,
            cursor.copy(f"COPY ({statement}) TO STDOUT (FORMAT csv)") as copy,
        ):
            parts.extend(copy)
        last = _last_contact_id(session)
    # COPY ends rows with LF; the exports end them with CRLF. No cell holds a line break
    # (addresses and public ids are validated without control characters), so every LF is
    # a row's end.
    return b"".join(parts).replace(b"\n", b"\r\n"), last


def _last_contact_id(session: Session) -> int:
    return int(session.execute(select(func.coalesce(func.max(col(Contact.id)), 0))).scalar_one())


async def _range_in_thread(database: Database, query: RangeQuery, low: int) -> tuple[bytes, int]:
    async with database.session_slots:
        return await anyio.to_thread.run_sync(_read_range, database, query, low)


async def stream_ranges(
    database: Database, header: tuple[str, ...], query: RangeQuery
) -> AsyncIterator[bytes]:
    """The header row, then range after range up to the highest contact id, read again after
    each range so that contacts created meanwhile are not cut off."""
    yield _csv_text([header])
    in_flight: deque[asyncio.Task[tuple[bytes, int]]] = deque()
    low = 0
    last = EXPORT_RANGE  # until the first range says
    try:
        while True:
            while len(in_flight) < _IN_FLIGHT and low < last:
                in_flight.append(asyncio.ensure_future(_range_in_thread(database, query, low)))
                low += EXPORT_RANGE
            if not in_flight:
                return
            text, last = await in_flight.popleft()
            if text:
                yield text
    finally:
        for task in in_flight:
            if task.done() and not task.cancelled():
                task.exception()
            task.cancel()


def _on_postgres(database: Database) -> bool:
    return database.engine.dialect.name == "postgresql"


def suppressions_csv(database: Database) -> AsyncIterator[bytes]:
    """`GET /v1/suppressions` as CSV bytes."""
    if _on_postgres(database):
        return stream_ranges(database, SUPPRESSIONS_HEADER, _suppressions_range)
    return stream_csv(database, SUPPRESSIONS_HEADER, read_suppressions)


def audience_csv(database: Database, topic: Topic) -> AsyncIterator[bytes]:
    """`GET /v1/topics/{key}/audience` as CSV bytes."""
    if _on_postgres(database):
        return stream_ranges(database, AUDIENCE_HEADER, _audience_range(topic))
    return stream_csv(database, AUDIENCE_HEADER, audience_reader(topic))
