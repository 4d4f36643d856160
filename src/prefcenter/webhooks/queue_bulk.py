"""Owns asking and queuing webhook deliveries for many audit events at once (an import batch,
a batch of API changes, a team-sent notice run): whether any enabled endpoint wants a type, in
one indexed query, and the deliveries of many events of one type, set-based. One event's
deliveries are webhooks.queue's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import closing
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy import select as core_select
from sqlmodel import Session

from prefcenter.db import UtcDateTime
from prefcenter.driver import PostgresCursor, postgres_cursor
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.webhooks.models import WebhookEndpoint, WebhookEndpointEvent
from prefcenter.webhooks.queue import DELIVERY_COLUMNS
from prefcenter.webhooks.rules import EVERY_TYPE, EventType

_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_SUBSCRIBED = WebhookEndpointEvent.__table__  # type: ignore[attr-defined]


def subscribed(session: Session, event_type: EventType, *, every: bool = True) -> bool:
    """Whether any enabled endpoint wants `event_type` (one indexed query); with `every`
    false, only those that name it (not `*`)."""
    if every:
        return subscribed_any(session, [event_type])
    return _any_endpoint(session, _SUBSCRIBED.c.event_type == event_type.value)


def subscribed_any(session: Session, event_types: Iterable[EventType]) -> bool:
    """Whether any enabled endpoint wants any of `event_types` (one indexed query for them
    all: a batch's events are of several types)."""
    wanted = sorted({t.value for t in event_types})
    if not wanted:
        return False
    return _any_endpoint(session, _SUBSCRIBED.c.event_type.in_([*wanted, EVERY_TYPE]))


class SentQuestion:
    """`subscribed_any` sent in the connection's pipeline (PostgreSQL), its answer read once
    the pipeline is synced."""

    def __init__(self, cursor: PostgresCursor | None) -> None:
        self._cursor = cursor  # None: no type, so no endpoint wants any

    def answer(self) -> bool:
        if self._cursor is None:
            return False
        with closing(self._cursor) as cursor:
            return cursor.fetchone() is not None


def ask_subscribed_any(session: Session, event_types: Iterable[EventType]) -> SentQuestion:
    """`subscribed_any`, sent without waiting, for a caller whose session's connection is in
    pipeline mode (PostgreSQL): the same query, on a cursor of its own."""
    wanted = sorted({t.value for t in event_types})
    if not wanted:
        return SentQuestion(None)
    cursor = postgres_cursor(session.connection())
    cursor.execute(_ANY_ENDPOINT_PG, {"types": [*wanted, EVERY_TYPE]})
    return SentQuestion(cursor)


_ANY_ENDPOINT_PG = (
    "SELECT s.endpoint_id FROM webhook_endpoint_event AS s "
    "JOIN webhook_endpoint AS e ON e.id = s.endpoint_id AND e.enabled "
    "WHERE s.event_type = ANY(%(types)s) LIMIT 1"
)


def _any_endpoint(session: Session, condition: Any) -> bool:
    found = session.execute(
        core_select(_SUBSCRIBED.c.endpoint_id)
        .select_from(
            _SUBSCRIBED.join(
                _ENDPOINTS,
                (_ENDPOINTS.c.id == _SUBSCRIBED.c.endpoint_id) & _ENDPOINTS.c.enabled,
            )
        )
        .where(condition)
        .limit(1)
    ).first()
    return found is not None


def queue_many_deliveries(
    session: Session,
    events: Sequence[tuple[str, str]],
    *,
    event_type: EventType,
    now: datetime,
) -> None:
    """The deliveries of many audit events of one type ((event id, contact id) each, in
    `seq` order), set-based: the events are staged in a TEMP table (COPY on PostgreSQL) and
    one INSERT … SELECT joins them with the endpoints that want the type. Nothing at all
    when none does."""
    if not events or not subscribed(session, event_type):
        return
    postgres = session.get_bind().dialect.name == "postgresql"
    suffix = "." + event_type.value
    if postgres:
        session.execute(
            text(
                "CREATE TEMP TABLE webhook_stage (ord integer, event_id text, contact_id text) "
                "ON COMMIT DROP"
            )
        )
        with (
            closing(postgres_cursor(session.connection())) as cursor,
            cursor.copy("COPY webhook_stage (ord, event_id, contact_id) FROM STDIN") as copy,
        ):
            for number, (event_id, contact_id) in enumerate(events):
                copy.write_row((number, event_id, contact_id))
        payload = "CAST(:payload AS JSON)"
    else:
        session.execute(text("DROP TABLE IF EXISTS temp.webhook_stage"))
        session.execute(
            text("CREATE TEMP TABLE webhook_stage (ord INTEGER, event_id TEXT, contact_id TEXT)")
        )
        session.connection().exec_driver_sql(
            "INSERT INTO temp.webhook_stage (ord, event_id, contact_id) VALUES (?, ?, ?)",
            [
                (number, event_id, contact_id)
                for number, (event_id, contact_id) in enumerate(events)
            ],
        )
        payload = ":payload"
    session.execute(
        text(
            f"INSERT INTO outbox_message ({', '.join(DELIVERY_COLUMNS)}) "  # noqa: S608
            f"SELECT :kind, 'msg_' || w.event_id || :suffix || '@' || CAST(e.id AS TEXT), "
            f"w.event_id, {payload}, :status, :now, :now, 0, "
            "CAST(e.id AS TEXT) || ':' || w.contact_id, e.id "
            "FROM webhook_stage AS w "
            "JOIN webhook_endpoint_event AS s ON s.event_type IN (:type, :every) "
            "JOIN webhook_endpoint AS e ON e.id = s.endpoint_id AND e.enabled "
            "ORDER BY w.ord, e.id"
        ).bindparams(bindparam("now", type_=UtcDateTime())),
        {
            "kind": OutboxKind.WEBHOOK.value,
            "suffix": suffix,
            "payload": orjson.dumps({"type": event_type.value}).decode(),
            "status": OutboxStatus.QUEUED.value,
            "now": now,
            "type": event_type.value,
            "every": EVERY_TYPE,
        },
    )
    if not postgres:
        session.execute(text("DROP TABLE IF EXISTS temp.webhook_stage"))
