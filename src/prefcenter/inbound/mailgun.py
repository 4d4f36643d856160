"""Owns Mailgun's webhooks: the signature in the body (hex HMAC-SHA256 of `timestamp` +
`token` with the webhook signing key, compared in constant time; a token seen before is a
replay) and what its events mean here.

Events (`event-data.event`): `failed` with `severity` `permanent` (hard bounce) or
`temporary` (soft), `complained`, `unsubscribed`; anything else is ignored. Deduplicated by
`event-data.id`. Mailgun retries every answer but 200 and 406 for 8 hours: what must not be
retried (a replay, a payload that cannot mean anything) is a 406.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from prefcenter.inbound.errors import NotAcceptable, SignatureInvalid
from prefcenter.inbound.events import (
    Action,
    InboundEvent,
    Provider,
    content_id,
    evidence_of,
    unix_time,
)

CLOCK_SKEW = timedelta(minutes=5)
# The receipts under which signatures' tokens are remembered (a namespace of their own).
SIGNATURE_RECEIPTS = "mailgun-sig"
_MAX_FIELD = 200


@dataclass(frozen=True, slots=True)
class MailgunDelivery:
    token: str  # remembered: the same token again is a replay
    event: InboundEvent


def _field(signature: dict[str, Any], name: str) -> str:
    value = signature.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD or not value.isascii():
        raise SignatureInvalid(f"`signature.{name}` is missing or malformed.")
    return value


def _payload(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotAcceptable("The body is not JSON (send the webhook's JSON form).") from exc
    if not isinstance(payload, dict):
        raise NotAcceptable("The body is not a JSON object.")
    return payload


def verify(
    signing_key: str, body: bytes, *, now: datetime, tolerance: timedelta
) -> tuple[str, dict[str, Any]]:
    """The signature's token and the payload, once the signature checks and its timestamp is
    neither older than `tolerance` nor ahead of our clock; else a 401."""
    payload = _payload(body)
    signature = payload.get("signature")
    if not isinstance(signature, dict):
        raise SignatureInvalid("The body has no `signature`.")
    timestamp = _field(signature, "timestamp")
    token = _field(signature, "token")
    given = _field(signature, "signature")
    expected = hmac.new(
        signing_key.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(given.lower(), expected):
        raise SignatureInvalid("The signature does not match the timestamp and token.")
    signed_at = unix_time(timestamp, default=now - 2 * tolerance)
    if signed_at < now - tolerance or signed_at > now + CLOCK_SKEW:
        raise SignatureInvalid("The signed timestamp is too old, or in the future.")
    return token, payload


def _action(data: dict[str, Any]) -> Action:
    match data.get("event"):
        case "failed":
            severity = data.get("severity")
            if severity == "permanent":
                return Action.HARD_BOUNCE
            return Action.SOFT_BOUNCE if severity == "temporary" else Action.IGNORED
        case "complained":
            return Action.COMPLAINT
        case "unsubscribed":
            return Action.UNSUBSCRIBE
        case _:
            return Action.IGNORED


def read_event(payload: dict[str, Any], token: str, *, now: datetime) -> MailgunDelivery:
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise NotAcceptable("The body has no `event-data` object.")
    action = _action(data)
    event_id = data.get("id")
    receipt = event_id if isinstance(event_id, str) and event_id else content_id(data)
    status = data.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    headers = headers if isinstance(headers, dict) else {}
    recipient = data.get("recipient")
    event = InboundEvent(
        provider=Provider.MAILGUN,
        receipt=receipt,
        action=action,
        address=recipient if isinstance(recipient, str) else None,
        occurred_at=unix_time(data.get("timestamp"), default=now),
        evidence=evidence_of(
            Provider.MAILGUN,
            receipt,
            str(data.get("event")),
            severity=data.get("severity"),
            reason=data.get("reason"),
            code=status.get("code"),
            diagnostic=status.get("description") or status.get("message"),
            message_id=headers.get("message-id"),
        ),
    )
    return MailgunDelivery(token=token, event=event)
