"""Owns the exports' PostgreSQL path: the database writes each CSV row as one text value, one
range of contact ids per query, so Python only fetches and joins strings (SQLite streams the
keyset chunks of `chunks`). The suppressions' rows come joined already, one text value a
range (`suppression_ranges`): a row fetched costs both the database and the driver more than
its text does.

Each range (`contact.id` in `(low, low + EXPORT_RANGE]`) is one query in a short read
transaction of its own, in id order: memory is bounded by the range's width, no snapshot is
held for the length of a download, and (as on SQLite) the export as a whole is not one
snapshot. Two ranges are read at once, on two connections, also while the last is sent
(`stream_ranges`). The same bytes as `chunks.csv_text` writes: cells spreadsheet-safe (`csv_cells`)
and quoted where Python's csv module quotes, rows ended by CRLF.

Not `COPY … TO STDOUT`: the driver hands its output over a row at a time through a Python
generator, which costs ten times more per row than fetching one text column.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Mapped
from sqlalchemy.sql import ClauseElement
from sqlmodel import col

from prefcenter.consent.models import Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.csv_cells import FORMULA_STARTS
from prefcenter.db import Database
from prefcenter.driver import PostgresCursor, postgres_cursor
from prefcenter.exports.chunks import csv_text
from prefcenter.exports.conditions import (
    allowed_where,
    bounced_exists,
    contact_address,
    reconsent_where,
    topic_model,
)
from prefcenter.exports.schemas import AUDIENCE_HEADER
from prefcenter.notices.rules import Reconsent
from prefcenter.topics.models import Topic

# Contact ids per query: at ~60 bytes a row, a few megabytes of CSV text at most.
EXPORT_RANGE = 100_000
# Ranges read at once, each on its own connection (one core's work each), and ranges held
# at most: read or being read, and not sent yet (a few megabytes each).
_CONNECTIONS = 2
_HELD = 3
_FORMULA_CODES = tuple(ord(start) for start in FORMULA_STARTS)

# A range's query over the bounds given (`_LOW`, `_HIGH`: `contact.id` in `(low, high]`).
RangeQuery = Callable[[ColumnElement[int], ColumnElement[int]], ClauseElement]
# Placeholder values: compiling `IN (…)` lists out wants one for every parameter; each
# range's own bounds are passed as it is read (`_read_range`).
_LOW = bindparam("low", 0, type_=Integer)
_HIGH = bindparam("high", 0, type_=Integer)

# Per range transaction (`SET LOCAL`, `set_locally`). JIT compilation costs more than running
# the query on one range, and parallel workers compete with the next range for the same cores.
# The statement's text is the same for every range (its bounds are parameters), so the driver
# prepares it after a few executions: it is still planned for each range's own bounds, not
# once for any bounds.
RANGE_PLAN: Mapping[str, str] = {
    "jit": "off",
    "max_parallel_workers_per_gather": "0",
    "DateStyle": "ISO, MDY",
    "plan_cache_mode": "force_custom_plan",
}
# A column as the models give it, or an expression over columns.
Sql = ColumnElement[Any] | Mapped[Any]


def set_locally(name: str, value: str | ColumnElement[str]) -> ColumnElement[str]:
    """`SET LOCAL name = value` as a column of a query, so that a range's settings come with
    the query that asks about it rather than in a round trip of their own: the statements
    after it in the transaction are planned with them."""
    return func.set_config(name, value, true())


def last_contact_id() -> ColumnElement[int]:
    """The highest contact id there is (where the export ends), as a column."""
    return select(func.coalesce(func.max(col(Contact.id)), 0)).scalar_subquery()


def csv_cell_sql(value: Sql, *, may_need_quotes: bool = True) -> ColumnElement[str]:
    """SQL for `csv_cells.spreadsheet_safe(value)` written as one CSV cell, quoted where
    Python's csv module quotes (a delimiter, quote, CR or LF in it). `may_need_quotes=False`
    skips that check, for values whose alphabet has none of those characters."""
    # The first character's code point: an integer comparison, far cheaper per row than text;
    # and most values start past every formula start, which one comparison says.
    first = func.ascii(value)
    formula = and_(first <= max(_FORMULA_CODES), first.in_(_FORMULA_CODES))
    safe = case((formula, literal("'") + value), else_=value)
    if not may_need_quotes:
        return safe
    # Asked of the value, not of `safe` (the same answer: `'` is none of the four), so that
    # the expression above is written out once per branch rather than once per check.
    return case((needs_quotes_sql(value), '"' + func.replace(safe, '"', '""') + '"'), else_=safe)


def needs_quotes_sql(value: Sql) -> ColumnElement[bool]:
    """Whether Python's csv module quotes the text `value` (a delimiter, quote, CR or LF)."""
    return or_(*(func.strpos(value, special) > 0 for special in (",", '"', "\r", "\n")))


def csv_line(*cells: ColumnElement[str]) -> ColumnElement[str]:
    line = cells[0]
    for cell in cells[1:]:
        line = line + "," + cell
    return line + "\r\n"


def timestamp_text(value: Sql) -> ColumnElement[str]:
    """A timestamp's text in UTC in the ISO date style (set for the transaction, see
    `RANGE_PLAN`): `2026-01-02 03:04:05.6789`, the fraction's trailing zeros cut."""
    return cast(func.timezone("UTC", value), Text)


def rfc3339_sql(text: Sql, *, end: str = "") -> ColumnElement[str]:
    """SQL for `chunks.csv_timestamp` from `timestamp_text`: RFC 3339, microseconds only when
    not zero (Python writes all six digits: the cut zeros are put back); then `end` (one
    concatenation less per row than after the call)."""
    whole_seconds = len("2026-01-01T00:00:00")
    with_micros = len("2026-01-01T00:00:00.000000")
    # Lengths in bytes (the text is ASCII): counting characters costs more, as does `rpad`.
    length = func.octet_length(text)
    zeros = func.repeat("0", with_micros - length)
    computed = case((length > whole_seconds, zeros + ("Z" + end)), else_="Z" + end)
    # The end for each length a timestamp of years 1-9999 has, most frequent first: a
    # constant, not `repeat` and a concatenation a row (the formula above for any other).
    ends = {with_micros: "Z" + end, whole_seconds: "Z" + end}
    ends |= {with_micros - cut: "0" * cut + "Z" + end for cut in range(1, 6)}
    return func.replace(text, " ", "T") + case(ends, value=length, else_=computed)


def timestamp_sql(value: Sql) -> ColumnElement[str]:
    """SQL for `chunks.csv_timestamp`: far cheaper per row than `to_char`."""
    return rfc3339_sql(timestamp_text(value))


def _audience_range(topic: Topic, rule: Reconsent | None) -> RangeQuery:
    model = topic_model(topic)

    def query(low: ColumnElement[int], high: ColumnElement[int]) -> Select[str]:
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
        allowed, needs_no_row = allowed_where(
            model,
            suppressed,
            bounced_exists(low, high),
            col(Subscription.status),
            reconsent_where(rule),
        )
        on_topic = and_(
            col(Subscription.contact_id) == col(Contact.id),
            col(Subscription.topic_id) == topic.id,
            col(Subscription.contact_id) > low,
            col(Subscription.contact_id) <= high,
        )
        base = select(
            csv_line(
                csv_cell_sql(contact_address()),
                # token_urlsafe: letters, digits, `-` and `_`, never anything to quote.
                csv_cell_sql(col(Contact.public_id), may_need_quotes=False),
            )
        )
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


@dataclass(frozen=True, slots=True)
class RangeStatement:
    """A range query compiled once for a whole export: its text with the range's bounds as the
    parameters `low` and `high`, and its other parameters' values (constants of this module)."""

    sql: str
    params: dict[str, Any]

    @classmethod
    def of(cls, database: Database, query: RangeQuery) -> RangeStatement:
        # Compiling costs more than the driver's part of a range (~7 ms, every range alike).
        compiled = query(_LOW, _HIGH).compile(
            dialect=database.engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        return cls(str(compiled), dict(compiled.params))

    def run(self, cursor: PostgresCursor, low: int, **values: Any) -> list[tuple[Any, ...]]:
        """The statement's rows for the range after `low` (`values`: parameters whose value
        is not the compiled one)."""
        return cursor.execute(
            self.sql, {**self.params, **values, "low": low, "high": low + EXPORT_RANGE}
        ).fetchall()


# A range's CSV text, and the highest contact id there is (where the export ends).
RangeText = tuple[bytes, int]
# Reads the range after `low` on the cursor given, in its transaction: a first query sets what
# the range is planned with and says the highest contact id, then the range's statement.
RangeReader = Callable[[PostgresCursor, int], RangeText]


@dataclass(frozen=True, slots=True)
class FixedRange:
    """The same statement and settings for every range (`plan`: sets them, says the highest
    contact id)."""

    plan: RangeStatement
    statement: RangeStatement

    @classmethod
    def of(cls, database: Database, query: RangeQuery, settings: Mapping[str, str]) -> FixedRange:
        def plan(low: ColumnElement[int], high: ColumnElement[int]) -> Select[Any]:
            columns: list[ColumnElement[Any]] = [last_contact_id()]
            columns += (set_locally(*setting) for setting in settings.items())
            return select(*columns)

        return cls(RangeStatement.of(database, plan), RangeStatement.of(database, query))

    def __call__(self, cursor: PostgresCursor, low: int) -> RangeText:
        ((last, *_),) = self.plan.run(cursor, low)
        lines = self.statement.run(cursor, low)
        return "".join([line for (line,) in lines]).encode(), int(last)


def _read_range(database: Database, reader: RangeReader, low: int) -> RangeText:
    """One range's CSV text, and the highest contact id there is. One snapshot: a reader may
    ask about the range before it reads it. Its statements go down a pipeline: the
    transaction's `BEGIN` with the first, not in a round trip of its own."""
    with (
        database.transaction(write=False, snapshot=True) as session,
        closing(postgres_cursor(session.connection())) as cursor,
        cursor.connection.pipeline(),
    ):
        return reader(cursor, low)


async def _range_in_thread(database: Database, reader: RangeReader, low: int) -> RangeText:
    async with database.session_slots:
        return await anyio.to_thread.run_sync(_read_range, database, reader, low)


async def stream_ranges(
    database: Database, header: tuple[str, ...], reader: RangeReader
) -> AsyncIterator[bytes]:
    """The header row, then range after range up to the highest contact id, read again after
    each range so that contacts created meanwhile are not cut off.

    `_CONNECTIONS` ranges are read at once from the start (the first ones before the highest
    id is known: one past it comes back empty), and a range is started as soon as one ends,
    not when the oldest is sent: a connection waits only while `_HELD` ranges are read and
    not sent yet."""
    yield csv_text([header])
    # In range order, read or being read, not sent yet.
    held: deque[asyncio.Task[RangeText]] = deque()
    low = 0
    last: int | None = None  # the highest contact id, once a range says
    reading = 0
    closed = False

    def start_ranges() -> None:
        nonlocal low, reading
        while (
            not closed
            and reading < _CONNECTIONS
            and len(held) < _HELD
            and (last is None or low < last)
        ):
            task = asyncio.ensure_future(_range_in_thread(database, reader, low))
            task.add_done_callback(range_read)
            held.append(task)
            reading += 1
            low += EXPORT_RANGE

    def range_read(task: asyncio.Task[RangeText]) -> None:
        nonlocal reading, last
        reading -= 1
        if task.cancelled() or task.exception() is not None:
            return  # raised where the stream awaits it
        last = max(last or 0, task.result()[1])
        start_ranges()

    try:
        start_ranges()
        while held:
            # Held until read: it counts among the `_HELD` while it is awaited.
            text, _ = await held[0]
            held.popleft()
            # Before this range is sent: the database works on the next ones while the
            # client reads it.
            start_ranges()
            if text:
                yield text
    finally:
        closed = True
        for task in held:
            if task.done() and not task.cancelled():
                task.exception()
            task.cancel()


def audience_ranges(
    database: Database, topic: Topic, rule: Reconsent | None = None
) -> AsyncIterator[bytes]:
    """`GET /v1/topics/{key}/audience` as CSV bytes, built by PostgreSQL."""
    reader = FixedRange.of(database, _audience_range(topic, rule), RANGE_PLAN)
    return stream_ranges(database, AUDIENCE_HEADER, reader)
