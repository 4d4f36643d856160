"""Owns the suppression list's PostgreSQL path (`ranges`): the query writing a range's
opt-outs and bounces as one text value, and how it is planned, chosen for each range by how
many rows it holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, case, false, func, literal, select, true, union_all
from sqlalchemy.dialects.postgresql import aggregate_order_by
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
    RangePlan,
    RangeStatement,
    csv_cell_sql,
    csv_line,
    rfc3339_sql,
    stream_ranges,
    timestamp_text,
)
from prefcenter.exports.schemas import SUPPRESSIONS_HEADER, SuppressionReason

# The range's suppressions are sorted for the aggregate's order (`_suppressions_range`): ~60
# bytes of text a row, past the default 4 MB for a range of suppressions only, which then
# spills to disk. Never a hash join, for which the planner would read every contact of the
# range into a hash table (measured: 3-4 times slower). It misjudges the two range conditions
# on each join as independent and expects a fiftieth of the rows there are, so which join is
# chosen here, by how many rows the range holds (`suppressions_plan`).
_SETTINGS = "; SET LOCAL work_mem = '32MB'; SET LOCAL enable_hashjoin = off"
# Few rows (suppressions are a few percent of contacts): walk them and probe `contact` by key.
_SPARSE_PLAN = RANGE_PLAN + _SETTINGS + "; SET LOCAL enable_mergejoin = off"
# Many rows: walk both key indexes in order and merge them, rather than probe `contact`'s
# index for each row. PostgreSQL CPU, 5M contacts: ranges of 100,000 ids all suppressed, 1.6
# against 2.5 µs a row; one in twenty suppressed, 25 against 19 ms a range. Not a bitmap scan
# of the rows, which would then be sorted for the merge (measured 10% slower).
_DENSE_PLAN = (
    RANGE_PLAN + _SETTINGS + "; SET LOCAL enable_nestloop = off"
    "; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off"
)
# A range is dense from one row (opt-out or bounce) for every `_DENSE_SHARE` contact ids on,
# about where the two plans cost the same by the figures above.
_DENSE_SHARE = 10


def _suppressions_range(low: ColumnElement[int], high: ColumnElement[int]) -> Select[str]:
    """The range's opt-outs and bounces, a row each, in contact order (the opt-out first), as
    one text value: a row a range for the driver to hand over, not a row a suppression.

    Each branch reads its values in a subquery the planner keeps (`OFFSET 0`), and the CSV
    line is written over that subquery's columns: inlined, the address and the timestamp's
    text would be computed again for every test and branch of the line's expression."""
    # An erased contact is counted without an address (`SuppressionReason.ERASED`).
    erased = col(Contact.erased_at).is_not(None)
    # contact_id, rank, erased, address, reason, since (`timestamp_text`)
    opted_out: Select[int, int, bool, str, str, str] = (
        select(
            col(Suppression.contact_id).label("contact_id"),
            literal(0).label("rank"),
            erased.label("erased"),
            contact_address().label("address"),
            case(
                (erased, literal(SuppressionReason.ERASED.value)),
                else_=literal(SuppressionReason.UNSUBSCRIBED_ALL.value),
            ).label("reason"),
            # The erasure for an erased contact, the opt-out for the others.
            timestamp_text(func.coalesce(col(Contact.erased_at), col(Suppression.since))).label(
                "since"
            ),
        )
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
        .offset(0)
    )
    bounced: Select[int, int, bool, str, str, str] = (
        select(
            col(Bounce.contact_id).label("contact_id"),
            literal(1).label("rank"),
            false().label("erased"),
            contact_address().label("address"),
            literal(SuppressionReason.BOUNCED.value).label("reason"),
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
    both = union_all(opted_out, bounced).subquery()
    email = case((both.c.erased, literal("")), else_=csv_cell_sql(both.c.address))
    line = csv_line(email, both.c.reason, rfc3339_sql(both.c.since))
    in_order = aggregate_order_by(literal(""), both.c.contact_id, both.c.rank)
    return select(func.coalesce(func.string_agg(line, in_order), ""))


@dataclass(frozen=True, slots=True)
class _DensityPlan:
    """Settings by how many rows a range holds: `dense` from `enough` on (as `rows` counts
    them, up to `enough`), `sparse` below."""

    rows: RangeStatement
    enough: int
    sparse: str
    dense: str

    def __call__(self, cursor: PostgresCursor, low: int) -> str:
        ((count,),) = self.rows.run(cursor, low)
        return self.dense if count >= self.enough else self.sparse


def _dense_rows() -> int:
    """The rows from which a range is dense (`_DENSE_SHARE`)."""
    return ranges.EXPORT_RANGE // _DENSE_SHARE + 1


def _suppressions_rows(low: ColumnElement[int], high: ColumnElement[int]) -> Select[int]:
    """How many opt-outs and bounces, in force or not, the range has, each counted up to
    `_dense_rows` (from their key indexes alone)."""
    counts = [
        select(func.count())
        .select_from(
            select(literal(1)).where(key > low, key <= high).limit(_dense_rows()).subquery()
        )
        .scalar_subquery()
        for key in (col(Suppression.contact_id), col(Bounce.contact_id))
    ]
    return select(counts[0] + counts[1])


def suppressions_plan(database: Database) -> RangePlan:
    """The plan of a range of `_suppressions_range` by how many rows it holds."""
    rows = RangeStatement.of(database, _suppressions_rows)
    return _DensityPlan(rows, _dense_rows(), sparse=_SPARSE_PLAN, dense=_DENSE_PLAN)


def suppressions_ranges(database: Database) -> AsyncIterator[bytes]:
    """`GET /v1/suppressions` as CSV bytes, built by PostgreSQL."""
    plan = suppressions_plan(database)
    return stream_ranges(database, SUPPRESSIONS_HEADER, _suppressions_range, plan)
