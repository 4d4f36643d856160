"""The shape of an audit event, as written and as read (`/v1/audit`, a contact's history)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class EventKind(StrEnum):
    """Persisted: values are only ever added."""

    CONSENT_CHANGE = "consent_change"  # a topic subscription
    GLOBAL_CONSENT_CHANGE = "global_consent_change"  # the contact-wide marketing opt-out
    TOPIC_CHANGE = "topic_change"


def new_event_id() -> str:
    return str(uuid.uuid4())


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
    # Known before the event is written, so that the state it records can point at it.
    id: str = field(default_factory=new_event_id)


class AuditEventOut(BaseModel):
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
    evidence: dict[str, Any]
    context: dict[str, Any]
