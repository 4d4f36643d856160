"""Owns Postmark's webhooks: HTTP basic authentication with the configured user and password
(compared in constant time), and what its records mean here.

`RecordType` `Bounce` (`Type` `HardBounce` or `BadEmailAddress`: hard; `SoftBounce`,
`Transient` or `DnsError`: soft; `SpamComplaint`: a complaint; `Unsubscribe`, a reply asking
to be removed: an unsubscribe), `SpamComplaint`, and `SubscriptionChange` with
`SuppressSending` (reason `ManualSuppression` by the recipient: an unsubscribe; `HardBounce`,
`SpamComplaint`: as those). A suppression made by the account itself (`Origin` `Customer` or
`Admin`) is ours, not the person's, and is ignored, as is everything else. Deduplicated by
`ID` (a subscription change has none: by its content).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from datetime import datetime
from typing import Any

import orjson

from prefcenter.inbound.errors import PayloadInvalid, SignatureInvalid
from prefcenter.inbound.events import (
    Action,
    InboundEvent,
    Provider,
    content_id,
    evidence_of,
    iso_time,
)

HARD = frozenset({"HardBounce", "BadEmailAddress"})
SOFT = frozenset({"SoftBounce", "Transient", "DnsError"})
_MAX_CREDENTIALS = 1024


def verify(authorization: str | None, *, user: str, password: str) -> None:
    """Refuse (401) unless the request carries these basic credentials. Both parts are
    compared in full whatever the first gives, so timing tells nothing."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > _MAX_CREDENTIALS:
        raise SignatureInvalid("Send the webhook's basic credentials.")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("The basic credentials are malformed.") from exc
    given_user, sep, given_password = decoded.partition(b":")
    user_ok = hmac.compare_digest(given_user, user.encode())
    password_ok = hmac.compare_digest(given_password, password.encode())
    if not sep or not (user_ok and password_ok):
        raise SignatureInvalid("Wrong webhook user or password.")


def _bounce_action(kind: Any) -> Action:
    if kind in HARD:
        return Action.HARD_BOUNCE
    if kind in SOFT:
        return Action.SOFT_BOUNCE
    if kind == "SpamComplaint":
        return Action.COMPLAINT
    if kind == "Unsubscribe":
        return Action.UNSUBSCRIBE
    return Action.IGNORED


def _change_action(record: dict[str, Any]) -> Action:
    if record.get("SuppressSending") is not True:
        return Action.IGNORED  # reactivated: the person's consent is not Postmark's to give
    match record.get("SuppressionReason"):
        case "HardBounce":
            return Action.HARD_BOUNCE
        case "SpamComplaint":
            return Action.COMPLAINT
        case "ManualSuppression" if record.get("Origin") == "Recipient":
            return Action.UNSUBSCRIBE
        case _:
            return Action.IGNORED


def read_event(body: bytes, *, now: datetime) -> InboundEvent:
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadInvalid("The body is not JSON.") from exc
    if not isinstance(record, dict):
        raise PayloadInvalid("The body is not a JSON object.")
    record_type = record.get("RecordType")
    if record_type in ("Bounce", "SpamComplaint"):
        action = _bounce_action(record.get("Type"))
        address, when = record.get("Email"), record.get("BouncedAt")
        given_id = record.get("ID")
    elif record_type == "SubscriptionChange":
        action = _change_action(record)
        address, when = record.get("Recipient"), record.get("ChangedAt")
        given_id = None
    else:
        action, address, when, given_id = Action.IGNORED, None, None, None
    if action is Action.IGNORED:
        return InboundEvent(Provider.POSTMARK, "", Action.IGNORED, None, now)
    receipt = str(given_id) if isinstance(given_id, int | str) and given_id else content_id(record)
    return InboundEvent(
        provider=Provider.POSTMARK,
        receipt=receipt,
        action=action,
        address=address if isinstance(address, str) else None,
        occurred_at=iso_time(when, default=now),
        evidence=evidence_of(
            Provider.POSTMARK,
            receipt,
            str(record_type),
            bounce_type=record.get("Type"),
            type_code=record.get("TypeCode"),
            description=record.get("Description"),
            details=record.get("Details"),
            suppression_reason=record.get("SuppressionReason"),
            origin=record.get("Origin"),
            message_stream=record.get("MessageStream"),
            message_id=record.get("MessageID"),
        ),
    )
