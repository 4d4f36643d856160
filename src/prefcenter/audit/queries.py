"""Owns reading the audit trail for people: the `/v1/audit` filters, resolved to indexed
conditions, and keyset pages of events by `seq`.

Each filter has an index that leads with its column and ends with `seq` (migration 0005), so a
page is an index range scan from the cursor that stops after `limit` rows, however long the
trail. The address is matched through its keyed hash (`address_hash`), never as text: that is
how an erased person's events stay findable by the old address while the trail holds none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_
from sqlmodel import Session, col
from sqlmodel import select as sqlmodel_select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import AuditEventOut
from prefcenter.contacts.addresses import Address
from prefcenter.contacts.models import Contact
from prefcenter.cursors import SeqCursor
from prefcenter.problems import Unprocessable

LIMIT_DEFAULT = 100
LIMIT_MAX = 1000
AUDIT_CURSOR = SeqCursor(kind="audit", field="cursor")


class InvalidTimeRange(Unprocessable):
    slug = "invalid-time-range"
    title = "Invalid time range"


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """The filters of `/v1/audit` and its export, as parsed from the query (all optional, all
    combined with AND). `since` is inclusive and `until` exclusive, both on `recorded_at`."""

    email: Address | None = None
    contact_id: str | None = None
    topic: str | None = None
    source: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """The filters resolved to SQL conditions, ready to read page after page."""

    where: tuple[ColumnElement[bool], ...]


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[AuditEventOut]
    # The cursor after the last event, or None when there is nothing after it (yet).
    next: str | None


def resolve_filters(session: Session, keys: AuditKeys, filters: AuditFilters) -> EventQuery:
    """Turn the filters into conditions on indexed columns.

    An address matches the events that carry its keyed hash, and also every event of the
    contact that holds the address now (its events from before an address correction carry the
    hash of the old address).
    """
    if filters.since is not None and filters.until is not None and filters.since >= filters.until:
        raise InvalidTimeRange(
            "`since` must be before `until`.",
            errors=[{"field": "until", "detail": "must be after since"}],
        )
    where: list[ColumnElement[bool]] = []
    if filters.email is not None:
        address_hash = keys.address_hash(filters.email.normalised)
        holder = session.exec(
            sqlmodel_select(Contact.public_id).where(Contact.address == filters.email.normalised)
        ).first()
        matches = col(AuditEvent.address_hash) == address_hash
        if holder is not None:
            matches = or_(matches, col(AuditEvent.contact_id) == holder)
        where.append(matches)
    if filters.contact_id is not None:
        where.append(col(AuditEvent.contact_id) == filters.contact_id)
    if filters.topic is not None:
        where.append(col(AuditEvent.topic) == filters.topic)
    if filters.source is not None:
        where.append(col(AuditEvent.source) == filters.source)
    if filters.actor is not None:
        where.append(col(AuditEvent.actor) == filters.actor)
    if filters.since is not None:
        where.append(col(AuditEvent.recorded_at) >= filters.since)
        # Where along `seq` the time range starts: `recorded_at` never runs backwards along
        # `seq` (it is taken under the head lock, audit.service), so this is one probe of
        # the `recorded_at` index, and the page a range scan of the primary key from there.
        # Without it the planner walks the key from the start, filtering by time.
        first = (
            sqlmodel_select(AuditEvent.seq)
            .where(col(AuditEvent.recorded_at) >= filters.since)
            .order_by(col(AuditEvent.recorded_at))
            .limit(1)
            .scalar_subquery()
        )
        where.append(col(AuditEvent.seq) >= first)
    if filters.until is not None:
        where.append(col(AuditEvent.recorded_at) < filters.until)
    return EventQuery(where=tuple(where))


def read_page(
    session: Session, query: EventQuery, *, after_seq: int, limit: int
) -> list[AuditEventOut]:
    """Up to `limit` matching events after `after_seq`, oldest first, with their evidence."""
    return read_events(session, col(AuditEvent.seq) > after_seq, *query.where, limit=limit)


def list_events(
    session: Session, query: EventQuery, *, cursor: str | None, limit: int
) -> AuditPage:
    """One page; `next` is null only when no matching event follows it at the time of asking.
    One row more than the page is read to know that."""
    after_seq = 0 if cursor is None else AUDIT_CURSOR.decode(cursor)
    events = read_page(session, query, after_seq=after_seq, limit=limit + 1)
    more = len(events) > limit
    page = events[:limit]
    return AuditPage(events=page, next=AUDIT_CURSOR.encode(page[-1].seq) if more else None)
