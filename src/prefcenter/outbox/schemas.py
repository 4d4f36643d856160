"""The outbox's vocabulary: kinds of message, their states, a claimed message and what became
of one attempt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class OutboxKind(StrEnum):
    """Persisted: values are only ever added."""

    MAIL = "mail"
    WEBHOOK = "webhook"  # a Standard Webhooks delivery to one endpoint (webhooks, delivery)


class OutboxStatus(StrEnum):
    """Persisted: values are only ever added."""

    QUEUED = "queued"  # waiting for its due time, or claimed by a worker
    SENT = "sent"
    FAILED = "failed"  # refused for good by the receiver, or every retry used up
    CANCELLED = "cancelled"  # nothing left to send it to (its contact was erased)


class AttemptOutcome(StrEnum):
    """Persisted: values are only ever added."""

    SENT = "sent"
    RETRY = "retry"  # a temporary error: tried again later
    FAILED = "failed"  # a permanent error, or the last retry
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message a worker holds until it records what became of it or its claim runs out."""

    id: int
    kind: OutboxKind
    message_id: str
    cause_event_id: str | None
    payload: dict[str, Any]
    created_at: datetime
    attempts: int  # before this one
    endpoint_id: int | None = None  # a webhook delivery's endpoint


@dataclass(frozen=True, slots=True)
class Attempted:
    """What became of one attempt at a claimed message."""

    message: Claimed
    outcome: AttemptOutcome  # RETRY means "a temporary error": the rule decides the rest
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    # A retry no sooner than this (a receiver's `Retry-After`), whatever the schedule says.
    not_before: datetime | None = None
