"""Owns queuing webhook deliveries in the transaction of the change they tell of: one outbox
row per endpoint that is enabled and subscribed to the type, none when no endpoint is (one
indexed query), written set-based (one statement per change, per replay; many events at once,
as an import batch's: webhooks.queue_bulk).

A delivery of an audit event carries only its type; the worker reads the event itself when
it sends (delivery.webhooks): its `seq` exists only once the change commits. A contact's
deliveries to an endpoint share an ordering key (`<endpoint>:<contact>`): the outbox hands
them out one at a time, in the order they were queued, which is `seq` order since every
writer of a contact's consent holds the contact's lock (or SQLite's one write lock).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import JSON, String, cast, literal, union_all
from sqlalchemy import insert as core_insert
from sqlalchemy import select as core_select
from sqlmodel import Session

from prefcenter.audit.canonical import format_time
from prefcenter.db import UtcDateTime
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.sqlite_times import sqlite_text
from prefcenter.webhooks.models import WebhookEndpoint, WebhookEndpointEvent
from prefcenter.webhooks.rules import EVERY_TYPE, EventType, types_of_event, webhook_id_of

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_SUBSCRIBED = WebhookEndpointEvent.__table__  # type: ignore[attr-defined]
# The outbox columns a delivery's INSERT … SELECT writes, in its order.
DELIVERY_COLUMNS = (
    "kind",
    "message_id",
    "cause_event_id",
    "payload",
    "status",
    "created_at",
    "due_at",
    "attempts",
    "ordering_key",
    "endpoint_id",
)


def _endpoint_text() -> Any:
    return cast(_ENDPOINTS.c.id, String)


def _rows_for(
    wanted: Any, *, cause_event_id: Any, contact_id: Any, now: datetime, every: bool = True
) -> Any:
    """SELECT of the outbox rows for `wanted` (rows of ord, type, webhook_id, payload) times
    the endpoints that want each type, in the order to deliver them."""
    endpoint = _endpoint_text()
    ordering_key = endpoint + ":" + contact_id if contact_id is not None else None
    return (
        core_select(
            literal(OutboxKind.WEBHOOK.value),
            wanted.c.webhook_id + "@" + endpoint,
            cause_event_id,
            wanted.c.payload,
            literal(OutboxStatus.QUEUED.value),
            literal(now, UtcDateTime()),
            literal(now, UtcDateTime()),
            literal(0),
            ordering_key if ordering_key is not None else literal(None, String()),
            _ENDPOINTS.c.id,
        )
        .select_from(
            wanted.join(
                _SUBSCRIBED,
                _SUBSCRIBED.c.event_type.in_([wanted.c.type, literal(EVERY_TYPE)])
                if every
                else _SUBSCRIBED.c.event_type == wanted.c.type,
            ).join(
                _ENDPOINTS,
                (_ENDPOINTS.c.id == _SUBSCRIBED.c.endpoint_id) & _ENDPOINTS.c.enabled,
            )
        )
        .order_by(wanted.c.ord, _ENDPOINTS.c.id)
    )


def _wanted(items: Sequence[tuple[EventType, str, dict[str, Any]]]) -> Any:
    """(type, webhook-id, payload) as a derived table of ord, type, webhook_id, payload."""
    selects = [
        core_select(
            literal(number).label("ord"),
            literal(event_type.value, String()).label("type"),
            literal(webhook_id, String()).label("webhook_id"),
            literal(payload, JSON()).label("payload"),
        )
        for number, (event_type, webhook_id, payload) in enumerate(items)
    ]
    return (union_all(*selects) if len(selects) > 1 else selects[0]).subquery("wanted")


def queue_event_deliveries(
    session: Session,
    *,
    event_id: str,
    contact_id: str | None,
    types: Sequence[EventType],
    now: datetime,
) -> None:
    """Queue the deliveries of an audit event (appended in this transaction) as `types`, to
    every endpoint that wants one, in one statement. For contact.bounced and
    contact.complained (consent.inbound), call it with the bounce's or complaint's event."""
    if not types:
        return
    if contact_id is not None and session.get_bind().dialect.name == "postgresql":
        # The one-click's statement on its own: the same text for the same number of types,
        # so psycopg prepares it (building and compiling the SQLAlchemy form below cost more
        # than the rest of a consent change's statements together).
        cte, params = guarded_queue_pg(
            event_id=event_id, contact_id=contact_id, types=types, now=now, only_if="true"
        )
        session.connection().exec_driver_sql(f"WITH {cte.removeprefix(', ')} SELECT 1", params)
        return
    if contact_id is not None:
        # SQLite: on the driver, as consent.ledger.api_lane_sqlite queues them (the SQLAlchemy
        # form below costs about a millisecond of CPU to build, key and compile each time).
        statement, params = contact_deliveries_sqlite(
            event_id=event_id, contact_id=contact_id, types=types, now=now
        )
        session.connection().exec_driver_sql(statement, params)
        return
    wanted = _wanted([(t, webhook_id_of(event_id, t), {"type": t.value}) for t in types])
    session.execute(
        core_insert(_MESSAGES).from_select(
            list(DELIVERY_COLUMNS),
            _rows_for(wanted, cause_event_id=literal(event_id, String()), contact_id=None, now=now),
        )
    )


@functools.cache
def _contact_deliveries_sqlite(count: int) -> str:
    """The INSERT of the deliveries of one contact's audit event as `count` types (the rows
    `_rows_for` selects), in sqlite3's parameter style: a `VALUES` list of the types joined to
    the enabled endpoints that want each."""
    values = ", ".join(f"({n}, :type{n}, :id{n}, :payload{n})" for n in range(count))
    return f"""WITH wanted (ord, type, webhook_id, payload) AS (VALUES {values})
INSERT INTO outbox_message ({", ".join(DELIVERY_COLUMNS)})
SELECT '{OutboxKind.WEBHOOK.value}', wanted.webhook_id || '@' || CAST(e.id AS VARCHAR), :event,
    wanted.payload, '{OutboxStatus.QUEUED.value}', :now, :now, 0,
    CAST(e.id AS VARCHAR) || ':' || :contact, e.id
FROM wanted
JOIN webhook_endpoint_event AS s ON s.event_type IN (wanted.type, '{EVERY_TYPE}')
JOIN webhook_endpoint AS e ON e.id = s.endpoint_id AND e.enabled
ORDER BY wanted.ord, e.id"""  # noqa: S608  (this module's constants; values are bound)


def contact_deliveries_sqlite(
    *, event_id: str, contact_id: str, types: Sequence[EventType], now: datetime
) -> tuple[str, dict[str, Any]]:
    """The statement that queues the deliveries of a contact's audit event on SQLite, in
    sqlite3's parameter style, with its parameters as SQLAlchemy would store them (the time as
    `UtcDateTime`, the payload as its `JSON` type writes it: `json.dumps`)."""
    params: dict[str, Any] = {"event": event_id, "contact": contact_id, "now": sqlite_text(now)}
    for n, event_type in enumerate(types):
        params[f"type{n}"] = event_type.value
        params[f"id{n}"] = webhook_id_of(event_id, event_type)
        params[f"payload{n}"] = json.dumps({"type": event_type.value})
    return _contact_deliveries_sqlite(len(types)), params


def queue_change_deliveries(
    session: Session,
    *,
    event_id: str,
    kind: str,
    outcome: str,
    to_status: str | None,
    contact_id: str | None,
    now: datetime,
) -> None:
    """The deliveries an audit event makes (webhooks.rules.types_of_event)."""
    queue_event_deliveries(
        session,
        event_id=event_id,
        contact_id=contact_id,
        types=types_of_event(kind, outcome=outcome, to_status=to_status),
        now=now,
    )


def queue_inline_delivery(
    session: Session,
    *,
    event_type: EventType,
    data: dict[str, Any],
    now: datetime,
) -> None:
    """Queue a delivery whose data is not an audit event (`import.finished`, and
    `notice.published` for issue "Notices"): the body is fixed now, with its own webhook-id.
    No order among them."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    payload = {
        "type": event_type.value,
        "webhook_id": webhook_id,
        "timestamp": format_time(now),
        "data": data,
    }
    wanted = _wanted([(event_type, webhook_id, payload)])
    session.execute(
        core_insert(_MESSAGES).from_select(
            list(DELIVERY_COLUMNS),
            _rows_for(wanted, cause_event_id=literal(None, String()), contact_id=None, now=now),
        )
    )


# --- in the one-click's single statement (consent.ledger.lane) ------------------------


def guarded_queue_pg(
    *, event_id: str, contact_id: str, types: Sequence[EventType], now: datetime, only_if: str
) -> tuple[str, dict[str, Any]]:
    """The deliveries of one audit event as a CTE for a caller's own PostgreSQL statement
    (`, hooks AS (…)`, to follow its other CTEs), with its parameters (named `h_…`): rows
    only where the SQL condition `only_if` holds (the event was appended), none when no
    endpoint wants the types. The same rows `queue_event_deliveries` writes."""
    values = ", ".join(
        f"({n}, %(h_type{n})s, %(h_id{n})s, %(h_payload{n})s)" for n in range(len(types))
    )
    params: dict[str, Any] = {"h_event": event_id, "h_contact": contact_id, "h_now": now}
    for n, event_type in enumerate(types):
        params[f"h_type{n}"] = event_type.value
        params[f"h_id{n}"] = webhook_id_of(event_id, event_type)
        params[f"h_payload{n}"] = orjson.dumps({"type": event_type.value}).decode()
    cte = f""", hooks AS (
    INSERT INTO outbox_message ({", ".join(DELIVERY_COLUMNS)})
    SELECT '{OutboxKind.WEBHOOK.value}', t.webhook_id || '@' || e.id, %(h_event)s,
        t.payload::json, '{OutboxStatus.QUEUED.value}', %(h_now)s, %(h_now)s, 0,
        e.id || ':' || %(h_contact)s, e.id
    FROM (VALUES {values}) AS t (ord, type, webhook_id, payload)
    JOIN webhook_endpoint_event AS s ON s.event_type IN (t.type, '{EVERY_TYPE}')
    JOIN webhook_endpoint AS e ON e.id = s.endpoint_id AND e.enabled
    WHERE {only_if}
    ORDER BY t.ord, e.id
)
"""  # noqa: S608  (built from this module's constants; every value is a bound parameter)
    return cte, params


# --- for the producers still to come ---------------------------------------------------


def queue_contact_bounced(
    session: Session, *, event_id: str, contact_id: str, now: datetime
) -> None:
    """`contact.bounced`: call in the transaction that appends the bounce's audit event
    (issue "The border with mail, coming in"), with that event's id; its `data` is the event
    as `/v1/audit` shows it. Add its audit kind to webhooks.rules.types_of_event and
    webhooks.service._REPLAYABLE so that replays include it."""
    queue_event_deliveries(
        session,
        event_id=event_id,
        contact_id=contact_id,
        types=(EventType.CONTACT_BOUNCED,),
        now=now,
    )


def queue_contact_complained(
    session: Session, *, event_id: str, contact_id: str, now: datetime
) -> None:
    """`contact.complained`: as `queue_contact_bounced`, for a spam complaint's event (the
    complaint's opt-out, if it records one as a consent change, is `consent.changed` too)."""
    queue_event_deliveries(
        session,
        event_id=event_id,
        contact_id=contact_id,
        types=(EventType.CONTACT_COMPLAINED,),
        now=now,
    )


def queue_notice_published(session: Session, *, data: dict[str, Any], now: datetime) -> None:
    """`notice.published` (issue "Notices"): call in the transaction that stores the notice
    version, with what receivers should know of it (key, version, language, effective_at,
    material, summary, url and sha256; no text of personal data)."""
    queue_inline_delivery(session, event_type=EventType.NOTICE_PUBLISHED, data=data, now=now)


def queue_per_recipient(
    session: Session, wanted: Any, *, cause_event_id: str, now: datetime
) -> None:
    """One delivery per row of `wanted` (a subquery of ord, type, webhook_id, payload and
    contact_id, built by the caller from its own tables) times the endpoints that name its
    type, in one INSERT … SELECT: `notice.recipient` for a whole notice run. Not to `*`
    endpoints: these deliveries carry addresses, which no other type does, so only an
    endpoint that asks for them by name gets them."""
    session.execute(
        core_insert(_MESSAGES).from_select(
            list(DELIVERY_COLUMNS),
            _rows_for(
                wanted,
                cause_event_id=literal(cause_event_id, String()),
                contact_id=wanted.c.contact_id,
                now=now,
                every=False,
            ),
        )
    )
