"""What the inbound routes answer."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class InboundReport(BaseModel):
    """What became of an ESP's delivery. An ESP only needs the 200; these are for people."""

    events: int = Field(description="Events in the delivery.")
    recorded: int = Field(description="Bounces, complaints and unsubscribes recorded.")
    duplicates: int = Field(description="Delivered before: nothing changed.")
    ignored: int = Field(description="Types that change nothing here (delivered, opened, …).")
    unknown_addresses: int = Field(description="For addresses no contact has: nothing stored.")


class MailOutcome(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    IGNORED = "ignored"


class MailReport(BaseModel):
    """What became of a message sent to the `mailto:` of List-Unsubscribe."""

    outcome: MailOutcome
    reason: str | None = Field(
        default=None,
        description="Why it changed nothing: `auto_reply`, `delivery_report`, "
        "`empty_return_path`, `no_token`, `invalid_token`, `unknown_contact`, `duplicate`.",
    )
