"""The shape of an audit event, as written and as read (`/v1/audit`, a contact's history)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

# Travels inside tokens, audit events and CSV exports: printable, no control characters.
CampaignId = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class EventKind(StrEnum):
    """Persisted: values are only ever added."""

    CONSENT_CHANGE = "consent_change"  # a topic subscription
    GLOBAL_CONSENT_CHANGE = "global_consent_change"  # the contact-wide marketing opt-out
    TOPIC_CHANGE = "topic_change"
    ERASURE = "erasure"  # a contact's personal data erased; its evidence documents go with it
    ADDRESS_CHANGE = "address_change"  # an admin corrected a contact's address (new one hashed)
    # An ESP reported a bounce (hard, or soft and counted): deliverability, not consent.
    BOUNCE = "bounce"
    BOUNCE_LIFTED = "bounce_lifted"  # an admin lifted a bounce, with a reason
    MAIL_SENT = "mail_sent"  # the service handed one of its mails to the transport
    # A webhook endpoint created, changed, deleted, its secret rotated, replayed, or disabled
    # (by a 410 answer or days of failures): where consent data goes is on the record.
    WEBHOOK_ENDPOINT = "webhook_endpoint"
    # A notice version published (notices): what people were told, and from when.
    NOTICE_PUBLISHED = "notice_published"
    # A team that sends a notice run itself marked a recipient's delivery (notices).
    NOTICE_DELIVERY = "notice_delivery"


def new_event_id() -> str:
    return str(uuid.uuid4())


def new_event_ids(count: int) -> list[str]:
    """`count` ids as `new_event_id` makes them (random UUIDs, version 4), from one read of
    the system's randomness: a batch's thousand ids without a thousand reads and UUID
    objects."""
    random = bytearray(os.urandom(16 * count))
    ids: list[str] = []
    for start in range(0, 16 * count, 16):
        random[start + 6] = random[start + 6] & 0x0F | 0x40  # version 4
        random[start + 8] = random[start + 8] & 0x3F | 0x80  # the RFC 4122 variant
        h = random[start : start + 16].hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: EventKind
    occurred_at: datetime
    actor: str
    source: str
    outcome: str
    contact_id: str | None = None
    topic: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    campaign_id: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    # The contact's normalised address: not stored in the event, only its keyed hash is.
    address: str | None = None
    # Known before the event is written, so that the state it records can point at it.
    id: str = field(default_factory=new_event_id)


class AuditEventFields(BaseModel):
    """An audit event without what it holds of the person and their request: the shape a
    reader without `audit:read` gets (`/v1/changes`)."""

    id: str
    seq: int
    kind: EventKind
    contact_id: str | None
    topic: str | None
    from_status: str | None
    to_status: str | None
    outcome: str
    occurred_at: datetime
    recorded_at: datetime
    actor: str
    source: str
    campaign_id: str | None
    reason: str | None


class AuditEventOut(AuditEventFields):
    # Proof given by the caller (ticket ids, form versions, addresses) and what the service
    # observed of the request (client address, user agent, idempotency key).
    evidence: dict[str, Any]
    context: dict[str, Any]


def _withheld(value: dict[str, Any] | None) -> bool:
    return value is None


class ScopedAuditEventOut(AuditEventFields):
    """An event as `/v1/audit` shows it, for a reader who may or may not read the audit trail:
    `evidence` and `context` are left out (not null, not empty) unless the key has `audit:read`.
    A feed for mail tools (`/v1/changes`) or a contact's history for a `consent:read` key must
    not hand every reader each person's client address, user agent and ticket ids."""

    evidence: dict[str, Any] | None = Field(
        default=None,
        exclude_if=_withheld,
        description="Only for a key that also has `audit:read`.",
    )
    context: dict[str, Any] | None = Field(
        default=None,
        exclude_if=_withheld,
        description="The request the change came with (client address, user agent, "
        "idempotency key); only for a key that also has `audit:read`.",
    )

    @staticmethod
    def of(event: AuditEventOut, *, with_evidence: bool) -> ScopedAuditEventOut:
        fields = {name: getattr(event, name) for name in AuditEventFields.model_fields}
        if with_evidence:
            return ScopedAuditEventOut(**fields, evidence=event.evidence, context=event.context)
        return ScopedAuditEventOut(**fields)


class VerifyOut(BaseModel):
    """The answer of `GET /v1/audit/verify` and `prefcenter audit verify`."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    # With `deep`: the first contact (by public id) whose current state its events do not imply.
    first_bad_contact: str | None = None
    # What is wrong, for people; null when ok.
    detail: str | None = None
