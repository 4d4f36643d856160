"""Owns the exports' PostgreSQL path: the database writes each CSV row as one text value, one
range of contact ids per query, so Python only fetches and joins strings (SQLite streams the
keyset chunks of `chunks`). The suppressions' rows come joined already, one text value a
range (`suppression_ranges`): a row fetched costs both the database and the driver more than
its text does.

Each range (`contact.id` in `(low, low + EXPORT_RANGE]`) is one query in a short read
transaction of its own, in id order: memory is bounded by the range's width, no snapshot is
held for the length of a download, and (as on SQLite) the export as a whole is not one
snapshot. Two ranges are in flight at once, so the database works on the next while the last
is sent. The same bytes as `chunks.csv_text` writes: cells spreadsheet-safe (`csv_cells`)
and quoted where Python's csv module quotes, rows ended by CRLF.

Not `COPY … TO STDOUT`: the driver hands its output over a row at a time through a Python
generator, which costs ten times more per row than fetching one text column.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
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
)
from sqlalchemy.orm import Mapped
from sqlalchemy.sql import ClauseElement
from sqlmodel import Session, col

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
_IN_FLIGHT = 2
_FORMULA_CODES = tuple(ord(start) for start in FORMULA_STARTS)

# A range's query over the bounds given (`_LOW`, `_HIGH`: `contact.id` in `(low, high]`).
RangeQuery = Callable[[ColumnElement[int], ColumnElement[int]], ClauseElement]
# Placeholder values: compiling `IN (…)` lists out wants one for every parameter; each
# range's own bounds are passed as it is read (`_read_range`).
_LOW = bindparam("low", 0, type_=Integer)
_HIGH = bindparam("high", 0, type_=Integer)

# Per range transaction. JIT compilation costs more than running the query on one range, and
# parallel workers compete with the next range for the same cores. The statement's text is
# the same for every range (its bounds are parameters), so the driver prepares it after a few
# executions: it is still planned for each range's own bounds, not once for any bounds.
RANGE_PLAN = (
    "SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0; "
    "SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL plan_cache_mode = force_custom_plan"
)
# A column as the models give it, or an expression over columns.
Sql = ColumnElement[Any] | Mapped[Any]


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
    needs_quotes = or_(*(func.strpos(value, special) > 0 for special in (",", '"', "\r", "\n")))
    return case((needs_quotes, '"' + func.replace(safe, '"', '""') + '"'), else_=safe)


def csv_line(*cells: ColumnElement[str]) -> ColumnElement[str]:
    line = cells[0]
    for cell in cells[1:]:
        line = line + "," + cell
    return line + "\r\n"


def timestamp_text(value: Sql) -> ColumnElement[str]:
    """A timestamp's text in UTC in the ISO date style (set for the transaction, see
    `RANGE_PLAN`): `2026-01-02 03:04:05.6789`, the fraction's trailing zeros cut."""
    return cast(func.timezone("UTC", value), Text)


def rfc3339_sql(text: Sql) -> ColumnElement[str]:
    """SQL for `chunks.csv_timestamp` from `timestamp_text`: RFC 3339, microseconds only when
    not zero (Python writes all six digits: the cut zeros are put back)."""
    whole_seconds = len("2026-01-01T00:00:00")
    with_micros = len("2026-01-01T00:00:00.000000")
    # Lengths in bytes (the text is ASCII): counting characters costs more, as does `rpad`.
    length = func.octet_length(text)
    zeros = func.repeat("0", with_micros - length)
    return func.replace(text, " ", "T") + case((length > whole_seconds, zeros + "Z"), else_="Z")


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

    def run(self, cursor: PostgresCursor, low: int) -> list[tuple[Any, ...]]:
        """The statement's rows for the range after `low`."""
        return cursor.execute(
            self.sql, {**self.params, "low": low, "high": low + EXPORT_RANGE}
        ).fetchall()


# The settings a range's transaction is planned with, given its cursor (to ask the database
# about the range first) and the range's `low` bound.
RangePlan = Callable[[PostgresCursor, int], str]


def fixed_plan(settings: str) -> RangePlan:
    """The same settings for every range."""
    return lambda _cursor, _low: settings


def _read_range(
    database: Database, statement: RangeStatement, plan: RangePlan, low: int
) -> tuple[bytes, int]:
    """One range's CSV rows, and the highest contact id there is (where the export ends)."""
    with database.transaction(write=False) as session:
        connection = session.connection()
        # To the driver as is: no row processing on the way back.
        with closing(postgres_cursor(connection)) as cursor:
            cursor.execute(plan(cursor, low))
            lines = statement.run(cursor, low)
        last = _last_contact_id(session)
    return "".join([line for (line,) in lines]).encode(), last


def _last_contact_id(session: Session) -> int:
    return int(session.execute(select(func.coalesce(func.max(col(Contact.id)), 0))).scalar_one())


async def _range_in_thread(
    database: Database, statement: RangeStatement, plan: RangePlan, low: int
) -> tuple[bytes, int]:
    async with database.session_slots:
        return await anyio.to_thread.run_sync(_read_range, database, statement, plan, low)


async def stream_ranges(
    database: Database, header: tuple[str, ...], query: RangeQuery, plan: RangePlan
) -> AsyncIterator[bytes]:
    """The header row, then range after range up to the highest contact id, read again after
    each range so that contacts created meanwhile are not cut off."""
    yield csv_text([header])
    statement = RangeStatement.of(database, query)
    in_flight: deque[asyncio.Task[tuple[bytes, int]]] = deque()
    low = 0
    last = EXPORT_RANGE  # until the first range says

    def start_ranges() -> None:
        nonlocal low
        while len(in_flight) < _IN_FLIGHT and low < last:
            in_flight.append(
                asyncio.ensure_future(_range_in_thread(database, statement, plan, low))
            )
            low += EXPORT_RANGE

    try:
        start_ranges()
        while in_flight:
            text, last = await in_flight.popleft()
            # Before this range is sent: the database works on the next ones while the
            # client reads it.
            start_ranges()
            if text:
                yield text
    finally:
        for task in in_flight:
            if task.done() and not task.cancelled():
                task.exception()
            task.cancel()


def audience_ranges(
    database: Database, topic: Topic, rule: Reconsent | None = None
) -> AsyncIterator[bytes]:
    """`GET /v1/topics/{key}/audience` as CSV bytes, built by PostgreSQL."""
    return stream_ranges(
        database, AUDIENCE_HEADER, _audience_range(topic, rule), fixed_plan(RANGE_PLAN)
    )
