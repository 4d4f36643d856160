"""What goes in and out of `/v1/consents`, `/v1/contacts/lookup` and `/v1/contacts/{id}`."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from prefcenter.audit.schemas import AuditEventOut
from prefcenter.consent.rules import Outcome, Status
from prefcenter.contacts.addresses import EmailAddress
from prefcenter.topics.schemas import TopicKey

MAX_LOOKUP = 1000
MAX_EVIDENCE_KEYS = 100
MAX_EVIDENCE_BYTES = 16 * 1024

SourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
PrintableText = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]


class RequestedStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


class ConsentChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailAddress
    topic: TopicKey | None = Field(
        default=None, description="Omitted: the change applies to all marketing."
    )
    status: RequestedStatus
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the person made the change; defaults to now."
    )
    source: SourceName = "api"
    campaign_id: Annotated[PrintableText, StringConstraints(max_length=200)] | None = None
    evidence: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_EVIDENCE_KEYS,
        description="Free-form proof: form text version, IP, ticket number…",
    )
    reason: Annotated[PrintableText, StringConstraints(max_length=2000)] | None = Field(
        default=None,
        description="Why (admin keys): required to reverse a person's own opt-out.",
    )

    @field_validator("evidence")
    @classmethod
    def _evidence_fits(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_EVIDENCE_BYTES:
            raise ValueError(f"must be at most {MAX_EVIDENCE_BYTES} bytes as JSON")
        return value


class ConsentChangeOut(BaseModel):
    contact_id: str
    email: str
    topic: str | None
    status: Status
    changed: bool
    outcome: Outcome
    event_id: str


class LookupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[EmailAddress] = Field(min_length=1, max_length=MAX_LOOKUP)


class SubscriptionOut(BaseModel):
    topic: str
    status: Status
    since: datetime


class ContactLookup(BaseModel):
    email: str
    contact_id: str | None
    suppressed: bool
    subscriptions: list[SubscriptionOut]


class LookupOut(BaseModel):
    contacts: list[ContactLookup]


class SuppressionOut(BaseModel):
    suppressed: bool
    since: datetime
    source: str
    by_recipient: bool


class ContactOut(BaseModel):
    contact_id: str
    email: str | None
    created_at: datetime
    erased_at: datetime | None
    suppressed: bool
    suppression: SuppressionOut | None
    subscriptions: list[SubscriptionOut]
    events: list[AuditEventOut]
