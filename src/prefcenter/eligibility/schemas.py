"""What goes in and out of `/v1/eligibility` and `/v1/eligibility/stream`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prefcenter.eligibility.rules import Reason
from prefcenter.topics.schemas import TopicKey

MAX_ELIGIBILITY = 10_000
STREAM_HEADER = ("email", "allowed", "reason")


class EligibilityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: TopicKey
    # Plain text, not EmailAddress: a line that is no address is answered `invalid_email`
    # rather than failing the batch. The count is checked by the service (413, not 422).
    emails: list[str] = Field(description=f"Up to {MAX_ELIGIBILITY:,} addresses; more is a 413.")


class EligibilityResult(BaseModel):
    email: str = Field(description="The address as it was given.")
    allowed: bool
    reason: Reason


class EligibilityOut(BaseModel):
    results: list[EligibilityResult] = Field(description="One per address asked, in that order.")
