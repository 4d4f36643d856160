"""Use cases of webhook endpoints: create, read, change, delete, rotate the secret (the old
one keeps signing for a day), disable (an admin, a 410, or five days of failures), the
delivery log, and replays from the audit trail. Every change to an endpoint is an audit
event: where consent data goes is on the record."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, delete, func, literal, union_all, update
from sqlalchemy import insert as core_insert
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.db import UtcDateTime, utcnow
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.settings import Settings
from prefcenter.webhooks import secret_box
from prefcenter.webhooks.addresses import Resolve, check_endpoint_url
from prefcenter.webhooks.errors import WebhookNotFound, WebhookUrlRefused
from prefcenter.webhooks.models import WebhookEndpoint, WebhookEndpointEvent
from prefcenter.webhooks.rules import (
    EVERY_TYPE,
    ROTATION_OVERLAP,
    EventType,
    UrlRefused,
    new_secret,
    secret_key,
)
from prefcenter.webhooks.schemas import (
    AttemptOut,
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    ReplayOut,
    SecretRotated,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    WebhookPatch,
)

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
WEBHOOK_SOURCE = "webhooks"

_STATUS_OF: dict[str, DeliveryStatus] = {
    OutboxStatus.QUEUED.value: DeliveryStatus.PENDING,
    OutboxStatus.SENT.value: DeliveryStatus.DELIVERED,
    OutboxStatus.FAILED.value: DeliveryStatus.FAILED,
    OutboxStatus.CANCELLED.value: DeliveryStatus.CANCELLED,
}
_OUTBOX_STATUS = {status: outbox for outbox, status in _STATUS_OF.items()}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who changes an endpoint, as the trail names them, and through what (api, console, cli)."""

    name: str
    channel: str


def _check(url: str, *, settings: Settings, resolve: Resolve) -> None:
    try:
        check_endpoint_url(url, resolve=resolve, allow_private=settings.webhooks_allow_private)
    except UrlRefused as exc:
        raise WebhookUrlRefused(
            f"The URL {exc}.", errors=[{"field": "url", "detail": str(exc)}]
        ) from None


def _find(session: Session, public_id: str, *, lock: bool = False) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(col(WebhookEndpoint.public_id) == public_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    found = session.exec(query.execution_options(populate_existing=True)).first()
    if found is None:
        raise WebhookNotFound(f"There is no webhook endpoint {public_id!r}.")
    return found


def _types_of(session: Session, endpoint_ids: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {i: [] for i in endpoint_ids}
    if not endpoint_ids:
        return found
    for endpoint_id, event_type in session.exec(
        select(WebhookEndpointEvent.endpoint_id, WebhookEndpointEvent.event_type)
        .where(col(WebhookEndpointEvent.endpoint_id).in_(list(endpoint_ids)))
        .order_by(col(WebhookEndpointEvent.event_type))
    ):
        found[endpoint_id].append(event_type)
    return found


def _out(row: WebhookEndpoint, events: list[str], now: datetime) -> dict[str, Any]:
    previous_until = row.previous_secret_until
    return {
        "id": row.public_id,
        "url": row.url,
        "events": events,
        "description": row.description,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "disabled_at": row.disabled_at,
        "previous_secret_expires_at": previous_until
        if previous_until is not None and previous_until > now
        else None,
        "failing_since": row.failing_since,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _set_types(session: Session, endpoint_id: int, events: Sequence[str]) -> None:
    session.execute(
        delete(WebhookEndpointEvent).where(col(WebhookEndpointEvent.endpoint_id) == endpoint_id)
    )
    session.add_all(
        WebhookEndpointEvent(endpoint_id=endpoint_id, event_type=str(t)) for t in events
    )
    session.flush()


def _record(
    session: Session,
    row: WebhookEndpoint,
    *,
    outcome: str,
    actor: Actor,
    now: datetime,
    reason: str | None = None,
    **details: Any,
) -> None:
    append_event(
        session,
        NewEvent(
            kind=EventKind.WEBHOOK_ENDPOINT,
            occurred_at=now,
            actor=actor.name,
            source=actor.channel,
            outcome=outcome,
            reason=reason,
            context={"endpoint": row.public_id, "url": row.url, **details},
        ),
    )


def create_endpoint(
    session: Session, spec: WebhookIn, *, settings: Settings, resolve: Resolve, actor: Actor
) -> WebhookCreated:
    _check(spec.url, settings=settings, resolve=resolve)
    now = utcnow()
    public_id = "ep_" + secrets.token_hex(10)
    secret = new_secret()
    row = WebhookEndpoint(
        public_id=public_id,
        url=spec.url,
        description=spec.description,
        enabled=True,
        secret=secret_box.seal(settings, secret, endpoint=public_id),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    events = [str(t) for t in spec.events]
    _set_types(session, row.id, events)
    _record(session, row, outcome="created", actor=actor, now=now, events=events)
    return WebhookCreated(**_out(row, events, now), secret=secret)


def list_endpoints(session: Session) -> list[WebhookOut]:
    rows = list(session.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.id))))
    types = _types_of(session, [r.id for r in rows if r.id is not None])
    now = utcnow()
    return [WebhookOut(**_out(r, types[r.id or 0], now)) for r in rows]


def get_endpoint(session: Session, public_id: str) -> WebhookOut:
    row = _find(session, public_id)
    assert row.id is not None
    return WebhookOut(**_out(row, _types_of(session, [row.id])[row.id], utcnow()))


def update_endpoint(
    session: Session,
    public_id: str,
    patch: WebhookPatch,
    *,
    settings: Settings,
    resolve: Resolve,
    actor: Actor,
) -> WebhookOut:
    row = _find(session, public_id, lock=True)
    assert row.id is not None
    now = utcnow()
    changed: dict[str, Any] = {}
    if patch.url is not None and patch.url != row.url:
        _check(patch.url, settings=settings, resolve=resolve)
        changed["url"] = {"from": row.url, "to": patch.url}
        row.url = patch.url
    if "description" in patch.model_fields_set and patch.description != row.description:
        changed["description"] = True
        row.description = patch.description
    if patch.events is not None:
        events = [str(t) for t in patch.events]
        if events != _types_of(session, [row.id])[row.id]:
            _set_types(session, row.id, events)
            changed["events"] = events
    if patch.enabled is not None and patch.enabled != row.enabled:
        changed["enabled"] = patch.enabled
        if patch.enabled:
            row.enabled = True
            row.disabled_reason = None
            row.disabled_at = None
            row.failing_since = None
        else:
            _disable(session, row, reason="disabled by an admin", now=now)
    if changed:
        row.updated_at = now
        session.add(row)
        session.flush()
        _record(session, row, outcome="updated", actor=actor, now=now, changed=changed)
    return WebhookOut(**_out(row, _types_of(session, [row.id])[row.id], now))


def delete_endpoint(session: Session, public_id: str, *, actor: Actor) -> None:
    """The endpoint, its subscriptions and its delivery log (pending deliveries included)."""
    row = _find(session, public_id, lock=True)
    _record(session, row, outcome="deleted", actor=actor, now=utcnow())
    session.execute(delete(OutboxMessage).where(col(OutboxMessage.endpoint_id) == row.id))
    session.delete(row)
    session.flush()


def rotate_secret(
    session: Session, public_id: str, *, settings: Settings, actor: Actor
) -> SecretRotated:
    """A new secret signs from now on; the current one signs beside it for 24 hours (one
    before that stops at once: two rotations within a day leave the last two)."""
    row = _find(session, public_id, lock=True)
    now = utcnow()
    secret = new_secret()
    row.previous_secret = row.secret
    row.previous_secret_until = now + ROTATION_OVERLAP
    row.secret = secret_box.seal(settings, secret, endpoint=row.public_id)
    row.updated_at = now
    session.add(row)
    session.flush()
    _record(session, row, outcome="secret_rotated", actor=actor, now=now)
    return SecretRotated(
        id=row.public_id, secret=secret, previous_secret_expires_at=row.previous_secret_until
    )


def signing_keys(settings: Settings, row: WebhookEndpoint, *, now: datetime) -> list[bytes]:
    """The HMAC keys that sign a delivery to `row` now: the secret, and for a day after a
    rotation the one before it."""
    keys = [secret_key(secret_box.open_sealed(settings, row.secret, endpoint=row.public_id))]
    if (
        row.previous_secret is not None
        and row.previous_secret_until is not None
        and row.previous_secret_until > now
    ):
        keys.append(
            secret_key(
                secret_box.open_sealed(settings, row.previous_secret, endpoint=row.public_id)
            )
        )
    return keys


def _disable(session: Session, row: WebhookEndpoint, *, reason: str, now: datetime) -> int:
    """Turn the endpoint off; its pending deliveries fail (a replay sends them again once it
    is on). Returns how many failed."""
    row.enabled = False
    row.disabled_reason = reason
    row.disabled_at = now
    row.updated_at = now
    session.add(row)
    session.flush()
    result = session.execute(
        update(_MESSAGES)
        .where(
            _MESSAGES.c.endpoint_id == row.id,
            _MESSAGES.c.status == OutboxStatus.QUEUED.value,
        )
        .values(
            status=OutboxStatus.FAILED.value,
            finished_at=now,
            last_error=f"not sent: the endpoint was disabled ({reason})",
            claimed_by=None,
            claimed_until=None,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def disable_endpoint(
    session: Session, endpoint_id: int, *, reason: str, actor: Actor, now: datetime
) -> bool:
    """Disable an endpoint the deliveries showed to be gone (410) or failing for days, with
    its audit event; False when it was already off or is gone."""
    row = session.get(WebhookEndpoint, endpoint_id, with_for_update=_lock_of(session))
    if row is None or not row.enabled:
        return False
    failed = _disable(session, row, reason=reason, now=now)
    _record(session, row, outcome="disabled", actor=actor, now=now, reason=reason, failed=failed)
    return True


def _lock_of(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --- the delivery log -----------------------------------------------------------------


def list_deliveries(
    session: Session,
    public_id: str,
    *,
    status: DeliveryStatus | None,
    limit: int,
    before: int | None,
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with its attempts."""
    row = _find(session, public_id)
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


# --- replays ---------------------------------------------------------------------------

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


def replay(session: Session, public_id: str, *, after_seq: int, actor: Actor) -> ReplayOut:
    """Queue again, to this endpoint, every audit event after `after_seq` of a type it wants,
    in `seq` order, under the `webhook-id` each first had (receivers deduplicate). Pending
    deliveries of those events are cancelled first: the replay sends them in order.

    Events that are not in the audit trail (import.finished) are not replayed. Deliveries
    already queued for earlier events go first; the replay comes after them.
    """
    row = _find(session, public_id, lock=True)
    assert row.id is not None
    now = utcnow()
    wanted = set(_types_of(session, [row.id])[row.id])
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
    _record(
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
