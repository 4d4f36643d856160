"""Read side of the audit trail browser: the filters of `/v1/audit` from a form, answered by
the same queries (`audit.queries`), a keyset page at a time, oldest first."""

from __future__ import annotations

from sqlmodel import Session

from prefcenter.admin.schemas import TrailFilter, TrailPage
from prefcenter.audit import queries
from prefcenter.audit.keys import AuditKeys
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.problems import Unprocessable

PAGE_SIZE = 50


def event_query(session: Session, keys: AuditKeys, filters: TrailFilter) -> queries.EventQuery:
    """The filters as the audit queries take them; a bad address or time range is a 422."""
    address = None
    if filters.email is not None:
        try:
            address = parse_address(filters.email)
        except InvalidAddress as exc:
            raise Unprocessable(f"{filters.email!r} is not a valid address: {exc}") from None
    return queries.resolve_filters(
        session,
        keys,
        queries.AuditFilters(
            email=address,
            contact_id=filters.contact_id,
            topic=filters.topic,
            source=filters.source,
            actor=filters.actor,
            since=filters.since,
            until=filters.until,
        ),
    )


def read_trail(
    session: Session, keys: AuditKeys, filters: TrailFilter, *, page_size: int | None = None
) -> TrailPage:
    """One page of matching events; filters that cannot be used are said on the page rather
    than failing it."""
    try:
        query = event_query(session, keys, filters)
        page = queries.list_events(
            session, query, cursor=filters.cursor, limit=page_size or PAGE_SIZE
        )
    except Unprocessable as exc:
        return TrailPage(events=[], next_cursor=None, problem=exc.detail)
    return TrailPage(events=page.events, next_cursor=page.next, problem=None)
