"""Owns `audit_event` (append-only, hash-chained), `audit_evidence` and `audit_free_text` (its
personal part, which erasure may delete) and `audit_head` (the one row that hands out the next
`seq`)."""

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    # One per `/v1/audit` filter, ending in `seq` so that a page is one index range scan
    # (migration 0005, audit.queries): `email` (the address hash, and the contact that holds
    # the address now), `contact_id` (also a contact's history and receipt), `topic`,
    # `source`, `actor`, `since`/`until` (`recorded_at`). No query of the contract looks an
    # event up by its `id` alone (a receipt reads its contact's events), so there is no index
    # of ids: a random key costs every append an index write at a random place (migration
    # 0018).
    __table_args__ = (
        Index("ix_audit_event_address_hash_seq", "address_hash", "seq"),
        Index("ix_audit_event_contact_id_seq", "contact_id", "seq"),
        Index("ix_audit_event_topic_seq", "topic", "seq"),
        Index("ix_audit_event_source_seq", "source", "seq"),
        Index("ix_audit_event_actor_seq", "actor", "seq"),
        Index("ix_audit_event_recorded_at", "recorded_at"),
    )

    # Gap-free, assigned inside the writing transaction from audit_head: 1, 2, 3, …
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    # A UUID (audit.schemas.new_event_id): unique by construction, not by an index.
    id: str = Field(max_length=40)
    kind: str = Field(max_length=32)  # audit.schemas.EventKind
    recorded_at: datetime = Field(sa_type=UtcDateTime)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    # The contact's public id (never the row id): events outlive the address on erasure.
    contact_id: str | None = Field(default=None, max_length=32)
    topic: str | None = Field(default=None, max_length=64)
    from_status: str | None = Field(default=None, max_length=20)
    to_status: str | None = Field(default=None, max_length=20)
    # applied | unchanged | superseded
    outcome: str = Field(max_length=20)
    actor: str = Field(max_length=200)
    source: str = Field(max_length=64)
    # In clear in format 1 events only (audit.canonical); null in later ones, whose text is in
    # `audit_free_text` and whose chain holds only the digests below.
    campaign_id: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=2000)
    # HMAC (a key per field, audit.keys) of the text in `audit_free_text`; null when there is
    # none, and in format 1 events.
    campaign_id_digest: str | None = Field(default=None, max_length=64)
    reason_digest: str | None = Field(default=None, max_length=64)
    # HMAC (audit key) of the contact's normalised address; kept on erasure, it is how the
    # chain commits to the address and how an erased address stays recognisable.
    address_hash: str | None = Field(default=None, max_length=64)
    # HMAC (audit key) of the `audit_evidence` document; None when the event has none.
    evidence_digest: str | None = Field(default=None, max_length=64)
    # The exact RFC 8785 bytes that were hashed: the columns above that its format has keys for,
    # plus "v" (audit.canonical.EVENT_KEYS).
    canonical: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # hex SHA-256(previous event's hash ‖ canonical); 32 zero bytes before seq 1.
    hash: str = Field(max_length=64)


class AuditEvidence(SQLModel, table=True):
    """What the caller gave as proof and what the service observed (client address, user
    agent, idempotency key, a clamped claimed time, the channel), as RFC 8785 bytes of
    `{"context": …, "evidence": …}`. Never updated; erasure deletes a contact's rows, and the
    chain still verifies through `audit_event.evidence_digest`."""

    __tablename__ = "audit_evidence"

    # The seq of its event, written by the event's append in the same transaction; no foreign
    # key: its check of each row cost a batch's append some 5 ms under the head's lock, for
    # what the appends and the append-only events already keep (migration 0021).
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    document: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AuditFreeText(SQLModel, table=True):
    """The free text of an event (format 2 on): its `campaign_id` and `reason` as given, which
    the chain commits to only by their keyed digests, so that a phone number typed into a
    reason does not outlive the person's erasure. A row only when the event has either. Never
    updated; erasure deletes a contact's rows, and the chain still verifies."""

    __tablename__ = "audit_free_text"

    # The seq of its event, without a foreign key, as `AuditEvidence.seq` (migration 0021).
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    campaign_id: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=2000)


# The id of the one row of `audit_head`.
HEAD_ID = 1


class AuditHead(SQLModel, table=True):
    """Exactly one row (id = 1). Updating it takes a row lock held to commit, which is what
    makes `seq` gap-free: a rolled-back writer rolls its number back too."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Hash of the event at `seq` (zeros before the first); the hash chain builds on it.
    hash: str = Field(max_length=64)
    # `recorded_at` of the event at `seq` (None before the first): the head's UPDATE stamps the
    # time, and the one-statement append (audit.service) builds the event from what it returns.
    recorded_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
