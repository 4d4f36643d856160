"""Owns `webhook_endpoint` (where deliveries go, with the secret that signs them) and
`webhook_endpoint_event` (the event types each endpoint subscribes to)."""

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, String, Text
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoint"

    id: int | None = Field(default=None, primary_key=True)
    # What the API names it by (`/v1/webhooks/{id}`): random, so ids reveal no count.
    public_id: str = Field(max_length=32, unique=True)
    url: str = Field(sa_column=Column(Text, nullable=False))
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True
    # Why and when it was disabled: by an admin, a 410 answer, or 5 days of failures.
    disabled_reason: str | None = Field(default=None, max_length=500)
    disabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # The signing secret (`whsec_…`), encrypted with a key derived from the audit key
    # (webhooks.secret_box): a copy of the database alone does not let anyone sign.
    secret: str = Field(sa_column=Column(Text, nullable=False))
    # The secret before the last rotation, which keeps signing beside the new one until then.
    previous_secret: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    previous_secret_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Since when every attempt has failed (None: the last one succeeded, or none was made).
    failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class WebhookEndpointEvent(SQLModel, table=True):
    """One row per event type an endpoint subscribes to; `*` stands for every type."""

    __tablename__ = "webhook_endpoint_event"

    endpoint_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("webhook_endpoint.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    # Indexed: a change asks "which enabled endpoints want this type?" (webhooks.queue).
    event_type: str = Field(sa_column=Column(String(32), primary_key=True, index=True))
