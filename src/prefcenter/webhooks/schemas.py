"""What goes in and out of `/v1/webhooks`."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator

from prefcenter.webhooks.rules import EVERY_TYPE, MAX_URL_LENGTH, EventType

# No control characters but TAB: NUL cannot be stored in PostgreSQL text.
_PRINTABLE_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
ENDPOINT_ID_PATTERN = r"^ep_[a-z0-9]{1,29}$"

# Further checked by webhooks.rules.check_url and where its host resolves (422 problems).
Url = Annotated[
    str,
    StringConstraints(min_length=8, max_length=MAX_URL_LENGTH, pattern=r"^https?://"),
    Field(description="Where deliveries are POSTed: http or https, no user name or password."),
]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=500, pattern=_PRINTABLE_PATTERN)
]
EventTypes = Annotated[
    list[EventType | Literal["*"]],
    Field(
        min_length=1,
        max_length=len(EventType) + 1,
        description='The event types to deliver, or `["*"]` for every type (also later ones).',
    ),
]


def _distinct_types(
    value: list[EventType | Literal["*"]] | None,
) -> list[EventType | Literal["*"]] | None:
    """Each type once; `*` beside others is `*` alone (it already means every type)."""
    if value is None:
        return None
    if EVERY_TYPE in value:
        return ["*"]
    return sorted(set(value), key=str)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url
    events: EventTypes
    description: Description | None = None

    _types = field_validator("events")(_distinct_types)


class WebhookPatch(BaseModel):
    """Only the members given change; `enabled: true` turns a disabled endpoint on again
    (what was not delivered meanwhile can be sent with a replay)."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    events: EventTypes | None = None
    description: Description | None = None
    enabled: StrictBool | None = None

    _types = field_validator("events")(_distinct_types)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    # Set after a rotation: until then the secret before it signs as well.
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    """The only answer that carries the secret: store it now."""

    secret: str = Field(description="`whsec_` and the base64 key; shown only in this answer.")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class SecretRotated(BaseModel):
    id: str
    secret: str = Field(description="The new secret; shown only in this answer.")
    previous_secret_expires_at: datetime = Field(
        description="Until then deliveries carry a signature by the old secret too."
    )


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its first try or a retry
    DELIVERED = "delivered"
    FAILED = "failed"  # every retry used up, or the endpoint was disabled
    CANCELLED = "cancelled"  # replaced by a replay


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    finished_at: datetime
    outcome: str
    error: str | None


class DeliveryOut(BaseModel):
    id: int = Field(description="The delivery's own number; `before=` pages by it.")
    webhook_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    type: str
    event_id: str | None = Field(description="The audit event it delivers, if any.")
    seq: int | None = Field(description="That event's place in the audit trail.")
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    log: list[AttemptOut]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
    # Pass as `before=` for the next (older) page; null on the last page.
    next_before: int | None


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_seq: Annotated[int, Field(ge=0, description="Replay audit events after this seq.")]


class ReplayOut(BaseModel):
    queued: int = Field(description="Deliveries queued, in seq order.")
    replaced: int = Field(description="Pending deliveries of those events, now cancelled.")
