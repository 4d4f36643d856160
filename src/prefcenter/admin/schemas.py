"""What the console's forms send, parsed before anything is looked up, and what its pages show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from prefcenter.audit.schemas import AuditEventOut
from prefcenter.consent.schemas import ContactOut, PrintableText
from prefcenter.topics.schemas import TopicKey, TopicOut

MAX_REASON = 2000
MAX_EVIDENCE = 2000


class StaffChangeSource(StrEnum):
    """How the person's request reached the staff (the `source` of the change; persisted)."""

    SUPPORT = "support"
    EMAIL = "email"
    PHONE = "phone"


class StaffChangeStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"


def _blank_is_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _utc_time(value: Any) -> Any:
    """A browser's `datetime-local` field has no offset: the console's times are UTC."""
    value = _blank_is_none(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip())
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return value


class StaffChangeIn(BaseModel):
    """A change staff record in the console for a person: always with a reason; a subscription
    also with evidence of the person's request (design: turning a topic on needs the person's
    act or an admin with a reason, and the issue asks for evidence too)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    topic: Annotated[TopicKey | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, description="Blank: all marketing."
    )
    status: StaffChangeStatus
    source: StaffChangeSource
    reason: Annotated[PrintableText, StringConstraints(min_length=1, max_length=MAX_REASON)]
    evidence: Annotated[
        Annotated[PrintableText, StringConstraints(max_length=MAX_EVIDENCE)] | None,
        BeforeValidator(_blank_is_none),
    ] = None

    @model_validator(mode="after")
    def _subscribing_needs_evidence(self) -> StaffChangeIn:
        if self.status is StaffChangeStatus.SUBSCRIBED and not self.evidence:
            raise ValueError("evidence: say how the person asked (ticket, message, call)")
        return self


FIELD_MESSAGES = {
    "reason": "Give a reason: why is this change being made, on whose request?",
    "evidence": "Say how the person asked for it (a ticket, message or call reference).",
    "topic": "Choose a topic, or all marketing.",
    "status": "Choose subscribed or unsubscribed.",
    "source": "Choose how the request arrived.",
}


def form_errors(exc: ValidationError) -> dict[str, str]:
    """One message per form field, worded for the person at the desk."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        loc = error.get("loc", ())
        field = str(loc[0]) if loc else ""
        if not field:
            # the model validator names its field at the start of its message
            field = str(error.get("msg", "")).removeprefix("Value error, ").split(":", 1)[0]
        errors.setdefault(field, FIELD_MESSAGES.get(field, str(error.get("msg", "invalid"))))
    return errors


@dataclass(frozen=True, slots=True)
class ContactView:
    contact: ContactOut
    # Every topic, for the form's choice and to show names beside keys.
    topics: list[TopicOut]
    # The source of each subscription's current status, by topic key.
    sources: dict[str, str]


class TrailFilter(BaseModel):
    """The audit trail browser's filters, from the query string; blank means "any"."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    email: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, max_length=320
    )
    contact_id: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, max_length=32
    )
    topic: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, max_length=64
    )
    source: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, max_length=64
    )
    actor: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, max_length=200
    )
    since: Annotated[AwareDatetime | None, BeforeValidator(_utc_time)] = None
    until: Annotated[AwareDatetime | None, BeforeValidator(_utc_time)] = None
    # Keyset position: a `next` of the page before (audit.queries cursors).
    cursor: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, max_length=64
    )


@dataclass(frozen=True, slots=True)
class TrailPage:
    events: list[AuditEventOut]
    # The cursor of the next page, or None at the end.
    next_cursor: str | None
    # Why nothing could be looked up (a filter that cannot match), for the page to say.
    problem: str | None
