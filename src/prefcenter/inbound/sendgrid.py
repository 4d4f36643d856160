"""Owns SendGrid's Event Webhook: its signature (ECDSA P-256 over SHA-256 of the timestamp
header followed by the raw body, base64 DER in `X-Twilio-Email-Event-Webhook-Signature`) and
what its events mean here.

Events: `bounce` (`type` `bounce`: hard; `blocked`: soft), `spamreport` (a complaint),
`unsubscribe` (all marketing) and `group_unsubscribe` (the group's topic, per
`PREFCENTER_SENDGRID_GROUP_TOPICS`; a group not listed: all marketing). Everything else
(`processed`, `delivered`, `open`, `click`, `deferred`, `dropped`, `group_resubscribe`, types
added later) is ignored. Deduplicated by `sg_event_id`.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from prefcenter.inbound.errors import PayloadInvalid, SignatureInvalid
from prefcenter.inbound.events import (
    Action,
    InboundEvent,
    Provider,
    content_id,
    evidence_of,
    unix_time,
)
from prefcenter.settings import ConfigError

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# A signed timestamp may be this far ahead of our clock.
CLOCK_SKEW = timedelta(minutes=5)
_MAX_SIGNATURE_CHARS = 200  # a DER ECDSA P-256 signature is at most 72 bytes


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid's console shows it (base64 of the DER
    SubjectPublicKeyInfo), or PEM. Only a P-256 key is accepted."""
    try:
        if "BEGIN PUBLIC KEY" in text:
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ConfigError(
            "PREFCENTER_SENDGRID_PUBLIC_KEY is not a public key: paste the verification key "
            "of SendGrid's Signed Event Webhook as shown"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("PREFCENTER_SENDGRID_PUBLIC_KEY must be an ECDSA P-256 key")
    return key


def verify(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    now: datetime,
    tolerance: timedelta,
) -> None:
    """Refuse (401) unless the signature is SendGrid's over this timestamp and body, and the
    timestamp is neither older than `tolerance` nor ahead of our clock."""
    if not signature or not timestamp or len(signature) > _MAX_SIGNATURE_CHARS:
        raise SignatureInvalid(f"Send {SIGNATURE_HEADER} and {TIMESTAMP_HEADER}.")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} is not a Unix time.")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("The signature is not base64.") from exc
    if base64.b64encode(raw).decode() != signature:
        # One spelling only: base64 has others for the same bytes (the unused low bits).
        raise SignatureInvalid("The signature is not canonical base64.")
    try:
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureInvalid("The signature does not match the body and timestamp.") from exc
    signed_at = unix_time(timestamp, default=now)
    if signed_at < now - tolerance or signed_at > now + CLOCK_SKEW:
        raise SignatureInvalid("The signed timestamp is too old, or in the future.")


def _action(event: dict[str, Any]) -> Action:
    match event.get("event"):
        case "bounce":
            return Action.SOFT_BOUNCE if event.get("type") == "blocked" else Action.HARD_BOUNCE
        case "spamreport":
            return Action.COMPLAINT
        case "unsubscribe" | "group_unsubscribe":
            return Action.UNSUBSCRIBE
        case _:
            return Action.IGNORED


def _topics(event: dict[str, Any], groups: dict[int, str]) -> tuple[str, ...] | None:
    if event.get("event") != "group_unsubscribe":
        return None
    group = event.get("asm_group_id")
    if isinstance(group, int) and not isinstance(group, bool) and group in groups:
        return (groups[group],)
    return None  # a group we cannot place: all marketing (when in doubt, suppress more)


def read_events(body: bytes, *, groups: dict[int, str], now: datetime) -> list[InboundEvent]:
    """The body's events, in order; a body that is no JSON array of objects is a 400."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadInvalid("The body is not JSON.") from exc
    if not isinstance(payload, list):
        raise PayloadInvalid("The body is not a JSON array of events.")
    events: list[InboundEvent] = []
    for item in payload:
        if not isinstance(item, dict):
            raise PayloadInvalid("An event is not a JSON object.")
        action = _action(item)
        if action is Action.IGNORED:
            events.append(
                InboundEvent(Provider.SENDGRID, "", Action.IGNORED, None, now, evidence={})
            )
            continue
        event_id = item.get("sg_event_id")
        receipt = event_id if isinstance(event_id, str) and event_id else content_id(item)
        events.append(
            InboundEvent(
                provider=Provider.SENDGRID,
                receipt=receipt,
                action=action,
                address=item.get("email") if isinstance(item.get("email"), str) else None,
                occurred_at=unix_time(item.get("timestamp"), default=now),
                topics=_topics(item, groups),
                evidence=evidence_of(
                    Provider.SENDGRID,
                    receipt,
                    str(item.get("event")),
                    bounce_type=item.get("type"),
                    bounce_classification=item.get("bounce_classification"),
                    status=item.get("status"),
                    reason=item.get("reason"),
                    asm_group_id=item.get("asm_group_id"),
                    message_id=item.get("sg_message_id"),
                ),
            )
        )
    return events
