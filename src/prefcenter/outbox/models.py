"""Owns `outbox_message` (every message to the world, written in the transaction of its cause)
and `outbox_attempt` (every try to deliver one, with its error)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Index, Integer, Text, text
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime

_QUEUED_WITH_KEY = "status = 'queued' AND ordering_key IS NOT NULL"


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox_message"
    __table_args__ = (
        # What a worker asks for: queued messages of its kinds, oldest due first.
        Index("ix_outbox_message_status_kind_due_at", "status", "kind", "due_at"),
        # Whether an earlier message of the same ordering key is still queued (claim_due):
        # queued messages only, so it stays small however long the delivery log grows.
        Index(
            "ix_outbox_message_queued_ordering_key_id",
            "ordering_key",
            "id",
            postgresql_where=text(_QUEUED_WITH_KEY),
            sqlite_where=text(_QUEUED_WITH_KEY),
        ),
        # An endpoint's delivery log (webhooks.service).
        Index("ix_outbox_message_endpoint_id_id", "endpoint_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # outbox.schemas.OutboxKind
    # The id receivers deduplicate by, the same on every attempt: a mail's Message-ID, a
    # webhook delivery's webhook-id.
    message_id: str = Field(max_length=255, unique=True)
    # The audit event that caused it (a pending subscription's, for its confirmation mail).
    cause_event_id: str | None = Field(default=None, max_length=40, index=True)
    # What the worker needs to write it (for mail: mail.schemas.MailPayload). No rendered text.
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16)  # outbox.schemas.OutboxStatus
    created_at: datetime = Field(sa_type=UtcDateTime)
    # When it may be tried (again); retries back off (outbox.rules).
    due_at: datetime = Field(sa_type=UtcDateTime)
    attempts: int = 0
    # A worker's claim: its token and until when; a claim past its time may be taken over.
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # When it was delivered, or given up (failed) or dropped (cancelled).
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Messages with the same key are delivered one after the other, in id order: one is
    # claimed only once no earlier one with its key is queued (a webhook endpoint and a
    # contact: a contact's events reach each endpoint in order). None: no order.
    ordering_key: str | None = Field(default=None, max_length=80)
    # A webhook delivery's endpoint; its log goes with it.
    endpoint_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("webhook_endpoint.id", ondelete="CASCADE"),
            nullable=True,
        ),
    )


class OutboxAttempt(SQLModel, table=True):
    __tablename__ = "outbox_attempt"

    id: int | None = Field(default=None, primary_key=True)
    message: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("outbox_message.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    number: int  # 1, 2, … per message
    started_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime = Field(sa_type=UtcDateTime)
    outcome: str = Field(max_length=16)  # outbox.schemas.AttemptOutcome
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    worker: str = Field(max_length=100)  # host and process id
