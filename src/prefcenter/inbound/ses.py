"""Owns what SES notifications mean here (the `Message` of a verified SNS notification):
`Bounce` (`bounceType` `Permanent`: hard; `Transient` or `Undetermined`: soft), `Complaint`
(a `not-spam` feedback is ignored) for each recipient named, and `Received` (SES receiving
with an SNS action: a message sent to the `mailto:` of List-Unsubscribe, handed to
inbound.mailto). Identity notifications (`notificationType`) and configuration-set events
(`eventType`) alike; every other type is ignored. One SNS message is one receipt, its
`MessageId`: delivered twice, it changes nothing the second time.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from prefcenter.inbound.errors import PayloadInvalid
from prefcenter.inbound.events import Action, InboundEvent, Provider, evidence_of, iso_time
from prefcenter.inbound.sns import SnsMessage

_BOUNCE_ACTIONS = {"Permanent": Action.HARD_BOUNCE, "Transient": Action.SOFT_BOUNCE}


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """A message SES received and published whole (`content`), for inbound.mailto."""

    raw: bytes
    receipt: str  # the SNS MessageId


def _recipients(section: dict[str, Any], field: str) -> list[dict[str, Any]]:
    listed = section.get(field)
    return [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []


def read_notification(message: SnsMessage, *, now: datetime) -> list[InboundEvent] | ReceivedMail:
    """The events of a verified notification, one per recipient it names (none to act on:
    a single ignored event), or the message SES received."""
    try:
        content = orjson.loads(message.message)
    except orjson.JSONDecodeError:
        content = None
    ignored = [InboundEvent(Provider.SES, message.message_id, Action.IGNORED, None, now)]
    if not isinstance(content, dict):
        return ignored
    kind = content.get("notificationType") or content.get("eventType")
    mail = content.get("mail") if isinstance(content.get("mail"), dict) else {}
    message_id = mail.get("messageId") if isinstance(mail, dict) else None
    if kind == "Bounce" and isinstance(content.get("bounce"), dict):
        bounce: dict[str, Any] = content["bounce"]
        action = _BOUNCE_ACTIONS.get(str(bounce.get("bounceType")), Action.SOFT_BOUNCE)
        return [
            InboundEvent(
                provider=Provider.SES,
                receipt=message.message_id,
                action=action,
                address=recipient.get("emailAddress"),
                occurred_at=iso_time(bounce.get("timestamp"), default=now),
                evidence=evidence_of(
                    Provider.SES,
                    message.message_id,
                    "Bounce",
                    bounce_type=bounce.get("bounceType"),
                    bounce_sub_type=bounce.get("bounceSubType"),
                    feedback_id=bounce.get("feedbackId"),
                    status=recipient.get("status"),
                    diagnostic=recipient.get("diagnosticCode"),
                    message_id=message_id,
                ),
            )
            for recipient in _recipients(bounce, "bouncedRecipients")
        ] or ignored
    if kind == "Complaint" and isinstance(content.get("complaint"), dict):
        complaint: dict[str, Any] = content["complaint"]
        if complaint.get("complaintFeedbackType") == "not-spam":
            return ignored
        return [
            InboundEvent(
                provider=Provider.SES,
                receipt=message.message_id,
                action=Action.COMPLAINT,
                address=recipient.get("emailAddress"),
                occurred_at=iso_time(complaint.get("timestamp"), default=now),
                evidence=evidence_of(
                    Provider.SES,
                    message.message_id,
                    "Complaint",
                    feedback_type=complaint.get("complaintFeedbackType"),
                    feedback_id=complaint.get("feedbackId"),
                    user_agent=complaint.get("userAgent"),
                    message_id=message_id,
                ),
            )
            for recipient in _recipients(complaint, "complainedRecipients")
        ] or ignored
    if kind == "Received" and isinstance(content.get("content"), str):
        return ReceivedMail(raw=_received_content(content), receipt=message.message_id)
    return ignored


def _received_content(content: dict[str, Any]) -> bytes:
    receipt = content.get("receipt")
    action = receipt.get("action") if isinstance(receipt, dict) else None
    encoding = action.get("encoding") if isinstance(action, dict) else None
    text = str(content["content"])
    if encoding == "BASE64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadInvalid("The received message is not base64.") from exc
    return text.encode("utf-8", "surrogateescape")
