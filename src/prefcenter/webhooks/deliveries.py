"""Owns the delivery log of a webhook endpoint (`GET /v1/webhooks/{id}/deliveries`) and the
`webhook-id` a queued delivery goes out under."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from prefcenter.audit.models import AuditEvent
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.outbox.schemas import OutboxStatus
from prefcenter.webhooks.schemas import AttemptOut, DeliveryList, DeliveryOut, DeliveryStatus
from prefcenter.webhooks.service import find_endpoint

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]

_STATUS_OF: dict[str, DeliveryStatus] = {
    OutboxStatus.QUEUED.value: DeliveryStatus.PENDING,
    OutboxStatus.SENT.value: DeliveryStatus.DELIVERED,
    OutboxStatus.FAILED.value: DeliveryStatus.FAILED,
    OutboxStatus.CANCELLED.value: DeliveryStatus.CANCELLED,
}
_OUTBOX_STATUS = {status: outbox for outbox, status in _STATUS_OF.items()}


def list_deliveries(
    session: Session,
    public_id: str,
    *,
    status: DeliveryStatus | None,
    limit: int,
    before: int | None,
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts."""
    row = find_endpoint(session, public_id)
    query = (
        core_select(
            _MESSAGES.c.id,
            _MESSAGES.c.message_id,
            _MESSAGES.c.cause_event_id,
            _MESSAGES.c.payload,
            _MESSAGES.c.status,
            _MESSAGES.c.attempts,
            _MESSAGES.c.created_at,
            _MESSAGES.c.due_at,
            _MESSAGES.c.finished_at,
            _MESSAGES.c.last_error,
            _EVENTS.c.seq,
        )
        .select_from(_MESSAGES.outerjoin(_EVENTS, _EVENTS.c.id == _MESSAGES.c.cause_event_id))
        .where(_MESSAGES.c.endpoint_id == row.id)
        .order_by(_MESSAGES.c.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(_MESSAGES.c.status == _OUTBOX_STATUS[status])
    if before is not None:
        query = query.where(_MESSAGES.c.id < before)
    rows = list(session.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    log: dict[int, list[AttemptOut]] = {r.id: [] for r in rows}
    if rows:
        for attempt in session.exec(
            select(OutboxAttempt)
            .where(col(OutboxAttempt.message).in_(list(log)))
            .order_by(col(OutboxAttempt.message), col(OutboxAttempt.number), col(OutboxAttempt.id))
        ):
            log[attempt.message].append(
                AttemptOut(
                    number=attempt.number,
                    started_at=attempt.started_at,
                    finished_at=attempt.finished_at,
                    outcome=attempt.outcome,
                    error=attempt.error,
                )
            )
    return DeliveryList(
        deliveries=[
            DeliveryOut(
                id=r.id,
                webhook_id=webhook_id_of_row(r.message_id, r.payload, r.cause_event_id),
                type=str(r.payload.get("type", "")),
                event_id=r.cause_event_id,
                seq=r.seq,
                status=_STATUS_OF[r.status],
                attempts=r.attempts,
                created_at=r.created_at,
                next_attempt_at=r.due_at if r.status == OutboxStatus.QUEUED.value else None,
                finished_at=r.finished_at,
                last_error=r.last_error,
                log=log[r.id],
            )
            for r in rows
        ],
        next_before=rows[-1].id if more and rows else None,
    )


def webhook_id_of_row(message_id: str, payload: dict[str, Any], cause: str | None) -> str:
    """The `webhook-id` of a queued delivery: its payload's, or else its row's message id
    without the endpoint and replay suffix (`msg_<event>.<type>@<endpoint>[/r…]`)."""
    given = payload.get("webhook_id")
    if isinstance(given, str):
        return given
    return message_id.split("@", 1)[0]
