"""Owns `audit_event` (append-only) and `audit_head` (the one row that hands out the next `seq`)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime

JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"

    # Gap-free, assigned inside the writing transaction from audit_head: 1, 2, 3, …
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    id: str = Field(max_length=40, unique=True)
    kind: str = Field(max_length=32)  # audit.schemas.EventKind
    recorded_at: datetime = Field(sa_type=UtcDateTime)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    # The contact's public id (never the row id): events outlive the address on erasure.
    contact_id: str | None = Field(default=None, max_length=32, index=True)
    topic: str | None = Field(default=None, max_length=64, index=True)
    from_status: str | None = Field(default=None, max_length=20)
    to_status: str | None = Field(default=None, max_length=20)
    # applied | unchanged | superseded
    outcome: str = Field(max_length=20)
    actor: str = Field(max_length=200)
    source: str = Field(max_length=64)
    campaign_id: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=2000)
    # What the caller gave as proof, as given.
    evidence: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDocument)
    # What the service itself observed: client address, user agent, idempotency key, the
    # claimed time when it was clamped, the channel.
    context: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDocument)


class AuditHead(SQLModel, table=True):
    """Exactly one row (id = 1). Updating it takes a row lock held to commit, which is what
    makes `seq` gap-free: a rolled-back writer rolls its number back too."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Hash of the event at `seq` (zeros before the first); the hash chain builds on it.
    hash: str = Field(max_length=64)
