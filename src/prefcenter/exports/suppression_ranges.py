"""Owns the suppression list's PostgreSQL path (`ranges`): the queries writing a range's
opt-outs and bounces as one text value, and which of them reads a range, and how it is
planned, chosen for each range by how many rows of each it holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from weakref import WeakKeyDictionary

from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Subquery,
    bindparam,
    case,
    false,
    func,
    literal,
    select,
    true,
    union_all,
)
from sqlalchemy.engine import Engine
from sqlmodel import col

from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import Suppression
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.driver import PostgresCursor
from prefcenter.exports import ranges
from prefcenter.exports.conditions import contact_address
from prefcenter.exports.ranges import (
    RANGE_PLAN,
    RangeStatement,
    RangeText,
    csv_cell_sql,
    last_contact_id,
    needs_quotes_sql,
    rfc3339_sql,
    set_locally,
    stream_ranges,
    timestamp_text,
)
from prefcenter.exports.schemas import SUPPRESSIONS_HEADER, SuppressionReason

# The range's suppressions are sorted for the aggregate's order (`_range_text`): ~60
# bytes of text a row, past the default 4 MB for a range of suppressions only, which then
# spills to disk. Never a hash join, for which the planner would read every contact of the
# range into a hash table (measured: 3-4 times slower). It misjudges the two range conditions
# on each join as independent and expects a fiftieth of the rows there are, so which join is
# chosen here, by how many rows the range holds (`SuppressionsRange`).
# Both plans name the same settings: each range's transaction sets them all.
_SETTINGS = {**RANGE_PLAN, "work_mem": "32MB", "enable_hashjoin": "off"}
# Few rows (suppressions are a few percent of contacts): walk them and probe `contact` by key.
_SPARSE_PLAN: Mapping[str, str] = {
    **_SETTINGS,
    "enable_mergejoin": "off",
    "enable_nestloop": "on",
    "enable_bitmapscan": "on",
    "enable_sort": "on",
}
# Many rows: walk both key indexes in order and merge them, rather than probe `contact`'s
# index for each row. PostgreSQL CPU, 5M contacts: ranges of 100,000 ids all suppressed, 1.6
# against 2.5 µs a row; one in twenty suppressed, 25 against 19 ms a range. Not a bitmap scan
# of the rows, which would then be sorted for the merge (measured 10% slower).
_DENSE_PLAN: Mapping[str, str] = {
    **_SETTINGS,
    "enable_mergejoin": "on",
    "enable_nestloop": "off",
    "enable_bitmapscan": "off",
    "enable_sort": "off",
}
# A range is dense from one row (opt-out or bounce) for every `_DENSE_SHARE` contact ids on,
# about where the two plans cost the same by the figures above.
_DENSE_SHARE = 10

# The line's cells after the address, with their commas: one concatenation a row, not four.
_OPTED_OUT = f",{SuppressionReason.UNSUBSCRIBED_ALL.value},"
_ERASED = f",{SuppressionReason.ERASED.value},"
_BOUNCED = f",{SuppressionReason.BOUNCED.value},"


def _opted_out(low: ColumnElement[int], high: ColumnElement[int], *, ranked: bool) -> Select[Any]:
    """The range's opt-outs in force: contact_id, [rank 0,] erased, address, reason (with the
    commas around it), since (`timestamp_text`). An erased contact is listed without an
    address (`SuppressionReason.ERASED`), since its erasure."""
    erased = col(Contact.erased_at).is_not(None)
    columns: list[ColumnElement[Any]] = [
        col(Suppression.contact_id).label("contact_id"),
        *([literal(0).label("rank")] if ranked else []),
        erased.label("erased"),
        contact_address().label("address"),
        case((erased, literal(_ERASED)), else_=literal(_OPTED_OUT)).label("reason"),
        timestamp_text(func.coalesce(col(Contact.erased_at), col(Suppression.since))).label(
            "since"
        ),
    ]
    return (
        select(*columns)
        .select_from(Contact)
        .join(Suppression, col(Suppression.contact_id) == col(Contact.id))
        .where(
            # The range on both sides of the join, so that each is read from its key index.
            col(Suppression.contact_id) > low,
            col(Suppression.contact_id) <= high,
            col(Contact.id) > low,
            col(Contact.id) <= high,
            col(Suppression.suppressed) == true(),
        )
        # A subquery the planner keeps: inlined into the line, the address and the
        # timestamp's text would be computed again for every test and branch of it.
        .offset(0)
    )


def _bounced(
    low: ColumnElement[int], high: ColumnElement[int]
) -> Select[int, int, bool, str, str, str]:
    """The range's bounces in force, of contacts not erased: `_opted_out`'s columns, rank 1."""
    return (
        select(
            col(Bounce.contact_id).label("contact_id"),
            literal(1).label("rank"),
            false().label("erased"),
            contact_address().label("address"),
            literal(_BOUNCED).label("reason"),
            timestamp_text(col(Bounce.since)).label("since"),
        )
        .select_from(Contact)
        .join(Bounce, col(Bounce.contact_id) == col(Contact.id))
        .where(
            col(Bounce.contact_id) > low,
            col(Bounce.contact_id) <= high,
            col(Contact.id) > low,
            col(Contact.id) <= high,
            col(Bounce.bounced) == true(),
            col(Contact.erased_at).is_(None),
        )
        .offset(0)
    )


def _range_text(rows: Subquery, *, quoted: bool) -> Select[Any]:
    """The rows' CSV lines as one text value, in the order the rows come in (`rows` is sorted
    and fenced by `OFFSET 0`, and the aggregate reads it alone: no join to reorder it, and no
    parallel workers, `RANGE_PLAN`, whose rows a gather would interleave): a row a range for
    the driver to hand over, not a row a suppression. Not `string_agg(… ORDER BY
    …)`, which sorts the lines again even when the join hands them over in order already
    (PostgreSQL 15: about a tenth of a dense range's time).

    `quoted=False`: the addresses as they are (no quoting), and beside the text whether any
    of them would have needed quotes (`needs_quotes_sql`), asked once of all of them together
    rather than of each (a tenth of a dense range's time again); only a range where one would
    is read again `quoted` (`SuppressionsRange`)."""
    address = csv_cell_sql(rows.c.address, may_need_quotes=quoted)
    email = case((rows.c.erased, literal("")), else_=address)
    line = email + rows.c.reason + rfc3339_sql(rows.c.since, end="\r\n")
    columns: list[ColumnElement[Any]] = [func.coalesce(func.string_agg(line, literal("")), "")]
    if not quoted:
        # The same aggregate each time: PostgreSQL computes it once.
        columns.append(needs_quotes_sql(func.string_agg(rows.c.address, literal(""))))
    return select(*columns)


def _suppressions_range(
    low: ColumnElement[int], high: ColumnElement[int], *, quoted: bool
) -> Select[Any]:
    """The range's opt-outs and bounces, a row each, in contact order (the opt-out first)."""
    both = union_all(_opted_out(low, high, ranked=True), _bounced(low, high)).subquery()
    # Sorted apart from its two parts, whose rows are fenced (`OFFSET 0`) each.
    rows = select(both).order_by(both.c.contact_id, both.c.rank).offset(0).subquery()
    return _range_text(rows, quoted=quoted)


def _opt_outs_range(
    low: ColumnElement[int], high: ColumnElement[int], *, quoted: bool
) -> Select[Any]:
    """`_suppressions_range` for a range without bounces: its opt-outs alone, one join and
    one sort key (a third less of the database's time a row than both)."""
    rows = _opted_out(low, high, ranked=False)
    return _range_text(rows.order_by(col(Suppression.contact_id)).subquery(), quoted=quoted)


def _dense_rows() -> int:
    """The rows from which a range is dense (`_DENSE_SHARE`)."""
    return ranges.EXPORT_RANGE // _DENSE_SHARE + 1


def _plan_setting(name: str, dense: ColumnElement[bool]) -> ColumnElement[str]:
    """The value of the setting `name` for the range: `_DENSE_PLAN`'s where `dense`, else
    `_SPARSE_PLAN`'s."""
    in_dense, in_sparse = _DENSE_PLAN[name], _SPARSE_PLAN[name]
    if in_dense == in_sparse:
        return literal(in_dense)
    return case((dense, in_dense), else_=in_sparse)


def _range_plan(low: ColumnElement[int], high: ColumnElement[int]) -> Select[Any]:
    """The range's first query: whether it is dense (`_DENSE_SHARE`: its opt-outs and bounces,
    in force or not, counted from their key indexes up to the parameter `enough`), whether it
    has bounces, and the highest contact id; it sets the range's plan (`set_locally`)."""
    enough = bindparam("enough", 0, type_=Integer)
    counted = [
        select(func.count())
        .select_from(select(literal(1)).where(key > low, key <= high).limit(enough).subquery())
        .scalar_subquery()
        .label(name)
        for key, name in (
            (col(Suppression.contact_id), "opt_outs"),
            (col(Bounce.contact_id), "bounces"),
        )
    ]
    # Fenced: each count is taken once, not again for every setting that asks about it.
    counts = select(*counted).offset(0).subquery()
    dense = counts.c.opt_outs + counts.c.bounces >= enough
    columns: list[ColumnElement[Any]] = [
        dense.label("dense"),
        (counts.c.bounces > 0).label("bounced"),
        last_contact_id().label("last"),
        *(set_locally(name, _plan_setting(name, dense)) for name in _DENSE_PLAN),
    ]
    return select(*columns).select_from(counts)


class _TextAsBytes(Loader):
    """A `text` value as the bytes the server sent when they are UTF-8 already: a range's CSV
    (megabytes) is sent on as it came, not decoded and encoded again."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._encoding = self.connection.info.encoding if self.connection else "utf-8"

    def load(self, data: Buffer) -> bytes:
        if self._encoding == "utf-8":
            return bytes(data)
        return str(data, self._encoding).encode()


@dataclass(frozen=True, slots=True)
class RangeLines:
    """A range's statement (`_range_text`): `unquoted` first, `quoted` where it has to be."""

    unquoted: RangeStatement
    quoted: RangeStatement

    @classmethod
    def of(cls, database: Database, query: Callable[..., Select[Any]]) -> RangeLines:
        return cls(
            RangeStatement.of(database, partial(query, quoted=False)),
            RangeStatement.of(database, partial(query, quoted=True)),
        )

    def read(self, cursor: PostgresCursor, low: int) -> bytes:
        ((text, needs_quotes),) = self.unquoted.run(cursor, low)
        if needs_quotes:
            # In the same transaction: the same rows.
            ((text,),) = self.quoted.run(cursor, low)
        return bytes(text)


@dataclass(frozen=True, slots=True)
class RangeChoice:
    """What a range is read with: planned `dense` or not, its statements, and the highest
    contact id there is."""

    dense: bool
    lines: RangeLines
    last: int


@dataclass(frozen=True, slots=True)
class SuppressionsRange:
    """Reads a range (`ranges.RangeReader`): asks how many rows it holds (`plan`, which sets
    how it is planned), then runs the statements for what it holds (`with_bounces` or
    `opt_outs`)."""

    plan: RangeStatement
    opt_outs: RangeLines
    with_bounces: RangeLines

    def choose(self, cursor: PostgresCursor, low: int) -> RangeChoice:
        """The plan and the statements for the range after `low`."""
        ((dense, bounced, last, *_),) = self.plan.run(cursor, low, enough=_dense_rows())
        lines = self.with_bounces if bounced else self.opt_outs
        return RangeChoice(bool(dense), lines, int(last))

    def __call__(self, cursor: PostgresCursor, low: int) -> RangeText:
        cursor.adapters.register_loader("text", _TextAsBytes)
        choice = self.choose(cursor, low)
        return choice.lines.read(cursor, low), choice.last


# The statements of each engine's exports: the same text every time, and compiling them took
# ~17 ms of the event loop before an export's first range could start.
_readers: WeakKeyDictionary[Engine, SuppressionsRange] = WeakKeyDictionary()


def suppressions_range(database: Database) -> SuppressionsRange:
    reader = _readers.get(database.engine)
    if reader is None:
        reader = _readers[database.engine] = SuppressionsRange(
            RangeStatement.of(database, _range_plan),
            RangeLines.of(database, _opt_outs_range),
            RangeLines.of(database, _suppressions_range),
        )
    return reader


def suppressions_ranges(database: Database) -> AsyncIterator[bytes]:
    """`GET /v1/suppressions` as CSV bytes, built by PostgreSQL."""
    return stream_ranges(database, SUPPRESSIONS_HEADER, suppressions_range(database))
