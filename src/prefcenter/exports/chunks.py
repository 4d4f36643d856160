"""Owns the exports' keyset path (SQLite's, and the Python writers both paths are held to):
the suppression list and a topic's audience, read a chunk at a time and written as CSV.

Exports are streamed in keyset chunks (`contact.id > last`, never OFFSET), each chunk read in a
short transaction of its own in a worker thread, so memory stays bounded and no snapshot is
held open for the length of a download. The export as a whole is therefore not one snapshot: a
change committed while it streams shows up or not depending on which chunk its contact falls
in, exactly as if the rows had been asked for one chunk at a time.

Every CSV cell goes through `spreadsheet_safe`, the public contact id too (its alphabet
includes `-`): a program reading the file drops one `'` that precedes a formula start.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import Select, and_, select, true
from sqlmodel import Session, col

from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.exports.conditions import (
    allowed_where,
    bounced_exists,
    contact_address,
    reconsent_where,
    topic_model,
)
from prefcenter.exports.schemas import SuppressionReason
from prefcenter.notices.rules import Reconsent
from prefcenter.topics.models import Topic

# Rows per chunk: large enough that a query's round trip is noise, small enough that a chunk
# (and its CSV text) is a few hundred kilobytes.
CHUNK_ROWS = 5000


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of an export: its CSV rows, and the keyset position after its last row
    (None when the export has no more rows)."""

    rows: list[tuple[str, ...]]
    last_id: int | None


ChunkReader = Callable[[Session, int], Chunk]


# --- CSV streaming ---------------------------------------------------------------------------


def csv_text(rows: Sequence[tuple[str, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows(tuple(spreadsheet_safe(cell) for cell in row) for row in rows)
    return buffer.getvalue().encode("utf-8")


def _read_chunk(database: Database, read: ChunkReader, after_id: int) -> Chunk:
    with database.transaction(write=False) as session:
        return read(session, after_id)


async def stream_csv(
    database: Database, header: tuple[str, ...], read: ChunkReader
) -> AsyncIterator[bytes]:
    """The header row, then chunk after chunk until `read` reports the end. Each chunk waits
    for one of the process's session slots like a request transaction does."""
    yield csv_text([header])
    after_id = 0
    while True:
        async with database.session_slots:
            chunk = await anyio.to_thread.run_sync(_read_chunk, database, read, after_id)
        if chunk.rows:
            yield csv_text(chunk.rows)
        if chunk.last_id is None:
            return
        after_id = chunk.last_id


def _chunk_of(rows: Sequence[Any], to_cells: Callable[[Any], tuple[str, ...]]) -> Chunk:
    """`rows` start with the contact's row id; a short chunk is the last one."""
    cells = [to_cells(row) for row in rows]
    last_id = int(rows[-1][0]) if len(rows) == CHUNK_ROWS else None
    return Chunk(rows=cells, last_id=last_id)


def csv_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC; the column type already hands back an aware datetime."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- GET /v1/suppressions --------------------------------------------------------------------


def read_suppressions(session: Session, after_id: int) -> Chunk:
    """Contacts with a contact-wide opt-out or a bounce in force, by contact row id (a row for
    each; erased contacts are listed once, without an address: `SuppressionReason.ERASED`).

    The two are walked on their own key indexes from the keyset position, a chunk of each;
    the rows up to the lower of the two chunks' last ids (where one is full) are complete, so
    the next chunk starts after that id."""
    suppressions = session.execute(
        select(
            col(Suppression.contact_id),
            contact_address(),
            col(Suppression.since),
            col(Contact.erased_at),
        )
        .select_from(Contact)
        .join(Suppression, col(Suppression.contact_id) == col(Contact.id))
        .where(
            # On both sides of the join, so that each walks its key index from the keyset
            # position rather than from the start (which makes a whole export quadratic).
            col(Suppression.contact_id) > after_id,
            col(Contact.id) > after_id,
            col(Suppression.suppressed) == true(),
        )
        # The suppression's key, not the contact's (the same value): SQLite then walks it in
        # order instead of sorting every remaining row for each chunk.
        .order_by(col(Suppression.contact_id))
        .limit(CHUNK_ROWS)
    ).all()
    bounces = session.execute(
        select(col(Bounce.contact_id), contact_address(), col(Bounce.since))
        .select_from(Contact)
        .join(Bounce, col(Bounce.contact_id) == col(Contact.id))
        .where(
            col(Bounce.contact_id) > after_id,
            col(Contact.id) > after_id,
            col(Bounce.bounced) == true(),
            col(Contact.erased_at).is_(None),
        )
        .order_by(col(Bounce.contact_id))
        .limit(CHUNK_ROWS)
    ).all()
    full = [int(rows[-1][0]) for rows in (suppressions, bounces) if len(rows) == CHUNK_ROWS]
    cut = min(full) if full else None
    merged = sorted(
        [(int(r[0]), 0, _suppression_cells(r)) for r in suppressions]
        + [
            (int(r[0]), 1, (str(r[1]), SuppressionReason.BOUNCED.value, csv_timestamp(r[2])))
            for r in bounces
        ]
    )
    cells = [row for contact_id, _, row in merged if cut is None or contact_id <= cut]
    return Chunk(rows=cells, last_id=cut)


def _suppression_cells(row: Any) -> tuple[str, ...]:
    if row[3] is not None:
        return ("", SuppressionReason.ERASED.value, csv_timestamp(row[3]))
    return (str(row[1]), SuppressionReason.UNSUBSCRIBED_ALL.value, csv_timestamp(row[2]))


# --- GET /v1/topics/{key}/audience -----------------------------------------------------------


def _audience_query(
    topic: Topic, after_id: int, rule: Reconsent | None
) -> Select[int | None, str, str]:
    model = topic_model(topic)
    # The keyset position is repeated on the key of every table read beside `contact`, so that
    # each is walked from there rather than from the start (which makes an export quadratic).
    # The suppression is an EXISTS, not an outer join: with a join SQLite builds a filter over
    # the whole suppression table for every chunk.
    suppressed = (
        select(col(Suppression.contact_id))
        .where(
            col(Suppression.contact_id) == col(Contact.id),
            col(Suppression.contact_id) > after_id,
            col(Suppression.suppressed),
        )
        .exists()
    )
    allowed, needs_no_row = allowed_where(
        model,
        suppressed,
        bounced_exists(after_id),
        col(Subscription.status),
        reconsent_where(rule),
    )
    on_topic = and_(
        col(Subscription.contact_id) == col(Contact.id),
        col(Subscription.topic_id) == topic.id,
        col(Subscription.contact_id) > after_id,
    )
    # Ordered by the key of the table walked (the same value either way): SQLite does not
    # know that the two orders agree, and would sort every remaining row for each chunk.
    key = col(Contact.id) if needs_no_row else col(Subscription.contact_id)
    query = select(key, contact_address(), col(Contact.public_id)).select_from(Contact)
    query = (
        query.outerjoin(Subscription, on_topic)
        if needs_no_row
        else query.join(Subscription, on_topic)
    )
    return (
        query.where(
            col(Contact.id) > after_id,
            col(Contact.erased_at).is_(None),
            col(Contact.address).is_not(None),
            allowed,
        )
        .order_by(key)
        .limit(CHUNK_ROWS)
    )


def audience_reader(topic: Topic, rule: Reconsent | None = None) -> ChunkReader:
    """`rule`: the re-consent the topic's notice asks for as the export starts."""

    def read(session: Session, after_id: int) -> Chunk:
        rows = session.execute(_audience_query(topic, after_id, rule)).all()
        return _chunk_of(rows, lambda r: (str(r[1]), str(r[2])))

    return read
