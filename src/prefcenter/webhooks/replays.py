"""Owns replays: queueing again, to one endpoint, the audit events after a `seq` that it
wants, under the `webhook-id` each first had."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, func, literal, union_all, update
from sqlalchemy import insert as core_insert
from sqlalchemy import select as core_select
from sqlmodel import Session

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.schemas import EventKind
from prefcenter.db import UtcDateTime
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.webhooks.rules import EVERY_TYPE, EventType
from prefcenter.webhooks.schemas import ReplayOut
from prefcenter.webhooks.service import (
    Actor,
    event_types_of,
    find_endpoint,
    record_endpoint_change,
)

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]

# Which audit events make which type (the SQL form of webhooks.rules.types_of_event), in
# the order one event's deliveries go out.
_REPLAYABLE: tuple[tuple[EventType, Any], ...] = (
    (
        EventType.CONSENT_CHANGED,
        _EVENTS.c.kind.in_([EventKind.CONSENT_CHANGE.value, EventKind.GLOBAL_CONSENT_CHANGE.value]),
    ),
    (
        EventType.CONTACT_SUPPRESSED,
        (_EVENTS.c.kind == EventKind.GLOBAL_CONSENT_CHANGE.value)
        & (_EVENTS.c.outcome == "applied")
        & (_EVENTS.c.to_status == "unsubscribed"),
    ),
    (EventType.CONTACT_ERASED, _EVENTS.c.kind == EventKind.ERASURE.value),
)


def replay(
    session: Session, public_id: str, *, after_seq: int, actor: Actor, now: datetime
) -> ReplayOut:
    """Queue again, to this endpoint, every audit event after `after_seq` of a type it wants,
    in `seq` order, under the `webhook-id` each first had (receivers deduplicate). Pending
    deliveries of those events are cancelled first: the replay sends them in order.

    Events that are not in the audit trail (import.finished) are not replayed. Deliveries
    already queued for earlier events go first; the replay comes after them.
    """
    row = find_endpoint(session, public_id, lock=True)
    assert row.id is not None
    wanted = set(event_types_of(session, [row.id])[row.id])
    branches = [
        (number, event_type, condition)
        for number, (event_type, condition) in enumerate(_REPLAYABLE)
        if EVERY_TYPE in wanted or event_type.value in wanted
    ]
    cancelled = session.execute(
        update(_MESSAGES)
        .where(
            _MESSAGES.c.endpoint_id == row.id,
            _MESSAGES.c.status == OutboxStatus.QUEUED.value,
            _MESSAGES.c.cause_event_id.in_(
                core_select(_EVENTS.c.id).where(_EVENTS.c.seq > after_seq)
            ),
        )
        .values(
            status=OutboxStatus.CANCELLED.value,
            finished_at=now,
            last_error="replaced by a replay",
            claimed_by=None,
            claimed_until=None,
        )
    )
    replaced = int(getattr(cancelled, "rowcount", 0) or 0)
    queued = 0
    if branches:
        tag = "/r" + secrets.token_hex(4)
        endpoint = literal(str(row.id), String())
        selects = [
            core_select(
                _EVENTS.c.seq.label("seq"),
                literal(number).label("ord"),
                _EVENTS.c.id.label("event_id"),
                _EVENTS.c.contact_id.label("contact_id"),
                literal(event_type.value, String()).label("type"),
            ).where(_EVENTS.c.seq > after_seq, condition)
            for number, event_type, condition in branches
        ]
        events = (union_all(*selects) if len(selects) > 1 else selects[0]).subquery("replayed")
        payload = _payload_expression(session, events.c.type)
        result = session.execute(
            core_insert(_MESSAGES).from_select(
                [
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
                ],
                core_select(
                    literal(OutboxKind.WEBHOOK.value),
                    "msg_" + events.c.event_id + "." + events.c.type + "@" + endpoint + tag,
                    events.c.event_id,
                    payload,
                    literal(OutboxStatus.QUEUED.value),
                    literal(now, UtcDateTime()),
                    literal(now, UtcDateTime()),
                    literal(0),
                    endpoint + ":" + cast(events.c.contact_id, String),
                    literal(row.id),
                ).order_by(events.c.seq, events.c.ord),
            ),
            execution_options={"preserve_rowcount": True},
        )
        queued = int(getattr(result, "rowcount", 0) or 0)
    record_endpoint_change(
        session,
        row,
        outcome="replayed",
        actor=actor,
        now=now,
        after_seq=after_seq,
        queued=queued,
        replaced=replaced,
    )
    return ReplayOut(queued=queued, replaced=replaced)


def _payload_expression(session: Session, event_type: Any) -> Any:
    """`{"type": <event_type>}` as JSON, built by the database."""
    if session.get_bind().dialect.name == "postgresql":
        return func.json_build_object("type", event_type)
    return func.json_object("type", event_type)
