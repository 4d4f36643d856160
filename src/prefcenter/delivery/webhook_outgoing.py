"""Owns what a claimed webhook delivery sends and where: its endpoint's URL and signing keys,
and its body, built from its audit event as `/v1/audit` shows it (without evidence and
context); or why it will not be sent."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import format_time
from prefcenter.audit.models import AuditEvent
from prefcenter.db import Database
from prefcenter.delivery.notice_webhook import is_recipient_delivery, recipient_bodies
from prefcenter.outbox.schemas import AttemptOutcome, Claimed
from prefcenter.settings import Settings
from prefcenter.webhooks.deliveries import webhook_id_of_row
from prefcenter.webhooks.models import WebhookEndpoint
from prefcenter.webhooks.secret_box import SecretUnreadable
from prefcenter.webhooks.service import signing_keys

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_DATA_COLUMNS = (
    "id",
    "seq",
    "kind",
    "contact_id",
    "topic",
    "from_status",
    "to_status",
    "outcome",
    "occurred_at",
    "recorded_at",
    "actor",
    "source",
    "campaign_id",
    "reason",
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed delivery, signed-ready; or why it will not be sent (`skip`)."""

    claimed: Claimed
    webhook_id: str
    url: str = ""
    keys: tuple[bytes, ...] = ()
    body: bytes = b""
    skip: str | None = None
    skip_outcome: AttemptOutcome = AttemptOutcome.FAILED


def prepare_outgoing(
    database: Database, settings: Settings, claimed: list[Claimed], now: datetime
) -> list[Outgoing]:
    """Each delivery's URL, keys and body: two queries for the whole batch."""
    with database.transaction(write=False, snapshot=True) as session:
        endpoint_ids = {c.endpoint_id for c in claimed if c.endpoint_id is not None}
        endpoints = {
            row.id: row
            for row in session.exec(
                select(WebhookEndpoint).where(col(WebhookEndpoint.id).in_(endpoint_ids))
            )
        }
        event_ids = {
            c.cause_event_id
            for c in claimed
            if c.cause_event_id is not None and not is_recipient_delivery(c)
        }
        events = _event_data(session, event_ids)
        recipients = recipient_bodies(session, settings, claimed)
    keys: dict[int, tuple[bytes, ...] | str] = {}
    written: list[Outgoing] = []
    for item in claimed:
        webhook_id = webhook_id_of_row(item.message_id, item.payload, item.cause_event_id)
        endpoint = endpoints.get(item.endpoint_id) if item.endpoint_id is not None else None
        if endpoint is None or endpoint.id is None:
            written.append(
                Outgoing(
                    item,
                    webhook_id,
                    skip="the endpoint is gone",
                    skip_outcome=AttemptOutcome.CANCELLED,
                )
            )
            continue
        if not endpoint.enabled:
            written.append(Outgoing(item, webhook_id, skip="the endpoint is disabled"))
            continue
        if endpoint.id not in keys:
            try:
                keys[endpoint.id] = tuple(signing_keys(settings, endpoint, now=now))
            except (SecretUnreadable, ValueError) as exc:
                keys[endpoint.id] = f"its secret cannot be read with this audit key ({exc})"
        endpoint_keys = keys[endpoint.id]
        if isinstance(endpoint_keys, str):
            written.append(
                Outgoing(item, webhook_id, skip=endpoint_keys, skip_outcome=AttemptOutcome.RETRY)
            )
            continue
        if item.id in recipients:
            body = recipients[item.id]
            if body is None:
                written.append(
                    Outgoing(
                        item,
                        webhook_id,
                        skip="the recipient was erased",
                        skip_outcome=AttemptOutcome.CANCELLED,
                    )
                )
                continue
        else:
            body = _body(item, events)
        if body is None:
            written.append(Outgoing(item, webhook_id, skip="its audit event is missing"))
            continue
        written.append(Outgoing(item, webhook_id, url=endpoint.url, keys=endpoint_keys, body=body))
    return written


def _event_data(session: Session, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The audit events by id, shaped as `/v1/audit` shows them, without evidence and
    context (which may hold personal data, and erasure deletes)."""
    if not ids:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for row in session.execute(
        core_select(*(_EVENTS.c[name] for name in _DATA_COLUMNS)).where(_EVENTS.c.id.in_(list(ids)))
    ):
        data = row._asdict()
        data["occurred_at"] = format_time(data["occurred_at"])
        data["recorded_at"] = format_time(data["recorded_at"])
        found[data["id"]] = data
    return found


def _body(item: Claimed, events: dict[str, dict[str, Any]]) -> bytes | None:
    """`{"type", "timestamp", "data"}`: the same bytes on every attempt."""
    payload = item.payload
    if item.cause_event_id is None:
        return orjson.dumps(
            {"type": payload["type"], "timestamp": payload["timestamp"], "data": payload["data"]}
        )
    data = events.get(item.cause_event_id)
    if data is None:
        return None
    return orjson.dumps({"type": payload["type"], "timestamp": data["recorded_at"], "data": data})
