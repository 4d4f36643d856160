"""Owns the use cases of webhook endpoints: create, read, change, delete, rotate the secret
(the old one keeps signing for a day), disable (an admin, a 410, or five days of failures).
The delivery log is `deliveries`', replays from the audit trail `replays`'. Every change to an
endpoint is an audit event: where consent data goes is on the record."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.outbox.models import OutboxMessage
from prefcenter.outbox.schemas import OutboxStatus
from prefcenter.settings import Settings
from prefcenter.webhooks import secret_box
from prefcenter.webhooks.addresses import Resolve, check_endpoint_url
from prefcenter.webhooks.errors import WebhookNotFound, WebhookUrlRefused
from prefcenter.webhooks.models import WebhookEndpoint, WebhookEndpointEvent
from prefcenter.webhooks.rules import (
    ROTATION_OVERLAP,
    UrlRefused,
    new_secret,
    secret_key,
)
from prefcenter.webhooks.schemas import (
    SecretRotated,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    WebhookPatch,
)

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
WEBHOOK_SOURCE = "webhooks"


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


def find_endpoint(session: Session, public_id: str, *, lock: bool = False) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(col(WebhookEndpoint.public_id) == public_id)
    if lock and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    found = session.exec(query.execution_options(populate_existing=True)).first()
    if found is None:
        raise WebhookNotFound(f"There is no webhook endpoint {public_id!r}.")
    return found


def event_types_of(session: Session, endpoint_ids: Sequence[int]) -> dict[int, list[str]]:
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


def record_endpoint_change(
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
    session: Session,
    spec: WebhookIn,
    *,
    settings: Settings,
    resolve: Resolve,
    actor: Actor,
    now: datetime,
) -> WebhookCreated:
    _check(spec.url, settings=settings, resolve=resolve)
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
    record_endpoint_change(session, row, outcome="created", actor=actor, now=now, events=events)
    return WebhookCreated(**_out(row, events, now), secret=secret)


def list_endpoints(session: Session, *, now: datetime) -> list[WebhookOut]:
    rows = list(session.exec(select(WebhookEndpoint).order_by(col(WebhookEndpoint.id))))
    types = event_types_of(session, [r.id for r in rows if r.id is not None])
    return [WebhookOut(**_out(r, types[r.id or 0], now)) for r in rows]


def get_endpoint(session: Session, public_id: str, *, now: datetime) -> WebhookOut:
    row = find_endpoint(session, public_id)
    assert row.id is not None
    return WebhookOut(**_out(row, event_types_of(session, [row.id])[row.id], now))


def update_endpoint(
    session: Session,
    public_id: str,
    patch: WebhookPatch,
    *,
    settings: Settings,
    resolve: Resolve,
    actor: Actor,
    now: datetime,
) -> WebhookOut:
    row = find_endpoint(session, public_id, lock=True)
    assert row.id is not None
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
        if events != event_types_of(session, [row.id])[row.id]:
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
        record_endpoint_change(
            session, row, outcome="updated", actor=actor, now=now, changed=changed
        )
    return WebhookOut(**_out(row, event_types_of(session, [row.id])[row.id], now))


def delete_endpoint(session: Session, public_id: str, *, actor: Actor, now: datetime) -> None:
    """The endpoint, its subscriptions and its delivery log (pending deliveries included)."""
    row = find_endpoint(session, public_id, lock=True)
    record_endpoint_change(session, row, outcome="deleted", actor=actor, now=now)
    session.execute(delete(OutboxMessage).where(col(OutboxMessage.endpoint_id) == row.id))
    session.delete(row)
    session.flush()


def rotate_secret(
    session: Session, public_id: str, *, settings: Settings, actor: Actor, now: datetime
) -> SecretRotated:
    """A new secret signs from now on; the current one signs beside it for 24 hours (one
    before that stops at once: two rotations within a day leave the last two)."""
    row = find_endpoint(session, public_id, lock=True)
    secret = new_secret()
    row.previous_secret = row.secret
    row.previous_secret_until = now + ROTATION_OVERLAP
    row.secret = secret_box.seal(settings, secret, endpoint=row.public_id)
    row.updated_at = now
    session.add(row)
    session.flush()
    record_endpoint_change(session, row, outcome="secret_rotated", actor=actor, now=now)
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
    record_endpoint_change(
        session, row, outcome="disabled", actor=actor, now=now, reason=reason, failed=failed
    )
    return True


def _lock_of(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
