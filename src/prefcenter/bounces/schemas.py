"""The shape of a bounce, as reported by an ESP (in) and as a contact's state (out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from prefcenter.bounces.rules import BounceKind

# What an admin gives as the reason for lifting a bounce: printable, like other reasons.
LiftReason = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=2000,
        pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]+$",
    ),
]


@dataclass(frozen=True, slots=True)
class BouncedContact:
    """The contact a bounce is for, as the caller found (and locked) it."""

    id: int
    public_id: str
    address: str


@dataclass(frozen=True, slots=True)
class BounceReport:
    """One bounce an ESP reported for one address, with its event as the evidence."""

    contact: BouncedContact
    kind: BounceKind
    occurred_at: datetime  # as the ESP dates it
    actor: str  # how the trail names who reported it: `esp:<name>`
    source: str  # the ESP: `ses`, `sendgrid`, `mailgun`, `postmark`
    evidence: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


class BounceOut(BaseModel):
    """A contact's bounce state (`GET /v1/contacts/{id}`)."""

    bounced: bool
    since: datetime
    source: str = Field(description="The ESP that reported it, or `admin` for a lift.")
    soft_bounces: int = Field(description="Soft bounces counted towards the limit.")


class BounceLiftIn(BaseModel):
    reason: LiftReason


class BounceLiftOut(BaseModel):
    contact_id: str
    bounced: bool
    changed: bool
    event_id: str | None = Field(description="The `bounce_lifted` audit event; null if none.")
