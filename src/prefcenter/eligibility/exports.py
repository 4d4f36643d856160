"""Owns the read side of the marketing exports: the suppression list, a topic's audience, and
the change feed of consent events.

Exports are streamed in keyset chunks (`contact.id > last`, never OFFSET), each chunk read in a
short transaction of its own in a worker thread, so memory stays bounded and no snapshot is
held open for the length of a download. The export as a whole is therefore not one snapshot: a
change committed while it streams shows up or not depending on which chunk its contact falls
in, exactly as if the rows had been asked for one chunk at a time.

Every CSV cell goes through `spreadsheet_safe`, the public contact id too (its alphabet
includes `-`): a program reading the file drops one `'` that precedes `= + - @`, TAB or CR.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import anyio
from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, true
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import EventKind, ScopedAuditEventOut
from prefcenter.bounces.models import Bounce
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Status
from prefcenter.contacts.models import Contact
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.eligibility.export_schemas import ChangesOut
from prefcenter.eligibility.rules import TopicModel, decide_eligibility
from prefcenter.problems import Unprocessable
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import ConsentModel, TopicKind
from prefcenter.topics.service import require_topic

# Rows per chunk: large enough that a query's round trip is noise, small enough that a chunk
# (and its CSV text) is a few hundred kilobytes.
CHUNK_ROWS = 5000

SUPPRESSIONS_HEADER = ("email", "reason", "since")
AUDIENCE_HEADER = ("email", "contact_id")

# The events of the change feed: consent of contacts, not the catalogue of topics.
CHANGE_KINDS = (EventKind.CONSENT_CHANGE, EventKind.GLOBAL_CONSENT_CHANGE)
CHANGES_LIMIT_DEFAULT = 100
CHANGES_LIMIT_MAX = 1000


class SuppressionReason(StrEnum):
    """The `reason` column of `/v1/suppressions`. Persisted by integrations: only ever added."""

    # The contact opted out of all marketing (a contact-wide `suppression` row in force).
    UNSUBSCRIBED_ALL = "unsubscribed_all"
    # The person was erased: the row is counted but carries no address (an empty `email`;
    # only a keyed hash of it is kept, and that stays out of exports), `since` the erasure.
    ERASED = "erased"
    # The address hard-bounced (bounces.models.Bounce): no mail of any kind. A contact that is
    # also opted out of all marketing has a row for each, the opt-out's first.
    BOUNCED = "bounced"


class InvalidCursor(Unprocessable):
    slug = "invalid-cursor"
    title = "Invalid cursor"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of an export: its CSV rows, and the keyset position after its last row
    (None when the export has no more rows)."""

    rows: list[tuple[str, ...]]
    last_id: int | None


ChunkReader = Callable[[Session, int], Chunk]


# --- CSV streaming ---------------------------------------------------------------------------


def _csv_text(rows: Sequence[tuple[str, ...]]) -> bytes:
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
    yield _csv_text([header])
    after_id = 0
    while True:
        async with database.session_slots:
            chunk = await anyio.to_thread.run_sync(_read_chunk, database, read, after_id)
        if chunk.rows:
            yield _csv_text(chunk.rows)
        if chunk.last_id is None:
            return
        after_id = chunk.last_id


def _chunk_of(rows: Sequence[Any], to_cells: Callable[[Any], tuple[str, ...]]) -> Chunk:
    """`rows` start with the contact's row id; a short chunk is the last one."""
    cells = [to_cells(row) for row in rows]
    last_id = int(rows[-1][0]) if len(rows) == CHUNK_ROWS else None
    return Chunk(rows=cells, last_id=last_id)


def _timestamp(value: datetime) -> str:
    """RFC 3339 in UTC; the column type already hands back an aware datetime."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- GET /v1/suppressions --------------------------------------------------------------------


def _address() -> ColumnElement[str]:
    """What the exports print as `email`: the address as the person gave it."""
    return func.coalesce(col(Contact.address_display), col(Contact.address))


def read_suppressions(session: Session, after_id: int) -> Chunk:
    """Contacts with a contact-wide opt-out or a bounce in force, by contact row id (a row for
    each; erased contacts are listed once, without an address: `SuppressionReason.ERASED`).

    The two are walked on their own key indexes from the keyset position, a chunk of each;
    the rows up to the lower of the two chunks' last ids (where one is full) are complete, so
    the next chunk starts after that id."""
    suppressions = session.execute(
        select(
            col(Suppression.contact_id),
            _address(),
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
        select(col(Bounce.contact_id), _address(), col(Bounce.since))
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
            (int(r[0]), 1, (str(r[1]), SuppressionReason.BOUNCED.value, _timestamp(r[2])))
            for r in bounces
        ]
    )
    cells = [row for contact_id, _, row in merged if cut is None or contact_id <= cut]
    return Chunk(rows=cells, last_id=cut)


def _suppression_cells(row: Any) -> tuple[str, ...]:
    if row[3] is not None:
        return ("", SuppressionReason.ERASED.value, _timestamp(row[3]))
    return (str(row[1]), SuppressionReason.UNSUBSCRIBED_ALL.value, _timestamp(row[2]))


# --- GET /v1/topics/{key}/audience -----------------------------------------------------------


def find_audience_topic(session: Session, key: str) -> Topic:
    """The topic, read before the answer starts so that an unknown one is a 404 problem."""
    return require_topic(session, key)


def _topic_model(topic: Topic) -> TopicModel:
    return TopicModel(kind=TopicKind(topic.kind), consent=ConsentModel(topic.consent))


def _allowed_where(
    model: TopicModel,
    suppressed: ColumnElement[bool],
    bounced: ColumnElement[bool],
    status: Mapped[str],
) -> tuple[ColumnElement[bool], bool]:
    """The SQL condition under which `decide_eligibility` allows a (not erased) contact, built
    by asking the rule itself about every state a contact can be in, so the export cannot
    disagree with it. Also says whether a contact without a subscription row can qualify (when
    not, the subscription is joined rather than outer-joined)."""
    states: list[Status | None] = [None, *Status]
    alternatives: list[ColumnElement[bool]] = []
    needs_no_row = False
    for is_suppressed, is_bounced in itertools.product((False, True), (False, True)):
        allowed = [
            state
            for state in states
            if decide_eligibility(
                model,
                erased=False,
                suppressed=is_suppressed,
                subscription=state,
                bounced=is_bounced,
            ).allowed
        ]
        if not allowed:
            continue
        needs_no_row = needs_no_row or None in allowed
        if len(allowed) == len(states):
            status_ok: ColumnElement[bool] = true()
        else:
            listed = [s.value for s in allowed if s is not None]
            parts: list[ColumnElement[bool]] = []
            if listed:
                parts.append(status.in_(listed))
            if None in allowed:
                parts.append(status.is_(None))
            status_ok = or_(*parts)
        suppression_ok = suppressed if is_suppressed else ~suppressed
        bounce_ok = bounced if is_bounced else ~bounced
        alternatives.append(and_(suppression_ok, bounce_ok, status_ok))
    if not alternatives:
        return false(), needs_no_row
    return or_(*alternatives), needs_no_row


def bounced_exists(low: int, high: int | None = None) -> ColumnElement[bool]:
    """Whether the outer query's contact is bounced, read from the bounce key index within the
    keyset range (the range repeated here for the reason the other tables repeat it)."""
    conditions = [
        col(Bounce.contact_id) == col(Contact.id),
        col(Bounce.contact_id) > low,
        col(Bounce.bounced),
    ]
    if high is not None:
        conditions.append(col(Bounce.contact_id) <= high)
    return select(col(Bounce.contact_id)).where(*conditions).exists()


def _audience_query(topic: Topic, after_id: int) -> Select[int | None, str, str]:
    model = _topic_model(topic)
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
    allowed, needs_no_row = _allowed_where(
        model, suppressed, bounced_exists(after_id), col(Subscription.status)
    )
    on_topic = and_(
        col(Subscription.contact_id) == col(Contact.id),
        col(Subscription.topic_id) == topic.id,
        col(Subscription.contact_id) > after_id,
    )
    # Ordered by the key of the table walked (the same value either way): SQLite does not
    # know that the two orders agree, and would sort every remaining row for each chunk.
    key = col(Contact.id) if needs_no_row else col(Subscription.contact_id)
    query = select(key, _address(), col(Contact.public_id)).select_from(Contact)
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


def audience_reader(topic: Topic) -> ChunkReader:
    def read(session: Session, after_id: int) -> Chunk:
        rows = session.execute(_audience_query(topic, after_id)).all()
        return _chunk_of(rows, lambda r: (str(r[1]), str(r[2])))

    return read


# --- GET /v1/changes -------------------------------------------------------------------------
#
# `seq` is a commit-order cursor: each writer takes the next `seq` under the audit head's row
# lock as the last statement before its COMMIT and holds that lock until COMMIT (SQLite: the
# write lock of BEGIN IMMEDIATE). So the events a reader can see are always every event up to
# some `seq`, never one with a hole before it, and "after the last seq I saw" skips nothing.


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


START_CURSOR = encode_cursor(0)


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    prefix, _, digits = text.partition(":")
    valid = prefix == "seq" and digits.isascii() and digits.isdigit() and len(digits) <= 18
    # Only the exact text handed out: base64 decoding alone would skip stray characters.
    if not valid or encode_cursor(int(digits)) != cursor:
        raise InvalidCursor(
            "`after` is not a cursor this service handed out; pass a `next` value as is.",
            errors=[{"field": "after", "detail": "is not a valid cursor"}],
        )
    return int(digits)


def read_changes(
    session: Session, *, after: str | None, limit: int, with_evidence: bool
) -> ChangesOut:
    """Consent events after the cursor, oldest first; `next` stays put when caught up.

    `with_evidence` only for a reader of the audit trail: evidence and request context hold
    the person's client address, user agent and whatever proof a caller attached."""
    after_seq = 0 if after is None else decode_cursor(after)
    out = read_events(
        session,
        col(AuditEvent.seq) > after_seq,
        col(AuditEvent.kind).in_([k.value for k in CHANGE_KINDS]),
        limit=limit,
    )
    next_seq = out[-1].seq if out else after_seq
    events = [ScopedAuditEventOut.of(event, with_evidence=with_evidence) for event in out]
    return ChangesOut(events=events, next=encode_cursor(next_seq))
