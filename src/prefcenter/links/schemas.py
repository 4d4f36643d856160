"""What goes in and out of `/v1/links` and `/v1/links/batch`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefcenter.audit.schemas import CampaignId
from prefcenter.contacts.addresses import EmailAddress
from prefcenter.topics.schemas import TopicKey

MAX_BATCH = 10_000


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailAddress
    topic: TopicKey | None = Field(
        default=None, description="Omitted: the links unsubscribe from all marketing."
    )
    campaign_id: CampaignId | None = Field(
        default=None, description="Recorded with the opt-out, to tell which mail it came from."
    )


class LinkBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[LinkRequest] = Field(
        min_length=1, description=f"Up to {MAX_BATCH:,} recipients; more is a 413."
    )


class ListHeaders(BaseModel):
    """The headers to put in the message, exactly as given (RFC 2369, RFC 8058)."""

    model_config = ConfigDict(populate_by_name=True)

    list_unsubscribe: str = Field(alias="List-Unsubscribe")
    list_unsubscribe_post: str = Field(alias="List-Unsubscribe-Post")


class LinkSet(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    email: str
    contact_id: str
    topic: str | None
    unsubscribe_url: str
    preferences_url: str
    headers: ListHeaders


class LinkProblem(BaseModel):
    """A batch item that gets no links (an erased address), with its problem document."""

    problem: dict[str, Any] = Field(description="RFC 9457 problem document of this item.")


class LinkBatchOut(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)

    items: list[LinkSet | LinkProblem] = Field(
        description="In request order: the links, or the item's problem (`address-erased`)."
    )
