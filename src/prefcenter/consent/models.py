"""Owns the current consent state: `subscription` (per contact and topic), `suppression`
(contact-wide) and `erased_address` (what stays of an erased address: its keyed hash).

Both are derived from the audit trail by the rules in consent.rules; they are kept as rows so
that eligibility is one indexed read.
"""

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Integer
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"
    # A topic's subscriptions in contact order: the audience export walks it in keyset
    # chunks (migration 0002).
    __table_args__ = (
        Index("ix_subscription_topic_id_contact_id_status", "topic_id", "contact_id", "status"),
    )

    contact_id: int = Field(foreign_key="contact.id", primary_key=True)
    # Looked up by topic through ix_subscription_topic_id_contact_id_status (migration 0022).
    topic_id: int = Field(foreign_key="topic.id", primary_key=True)
    status: str = Field(max_length=20)  # consent.rules.Status
    # When the change that set this state happened (claimed by the caller, clamped to now):
    # the ordering rule compares against it.
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    # When this status was recorded here.
    since: datetime = Field(sa_type=UtcDateTime)
    source: str = Field(max_length=64)
    # True when the person's own act set this state: an API client cannot reverse it.
    by_recipient: bool = False
    # The audit event that set this status. A confirmation link names the event that made the
    # subscription pending, so it stops working once anything else has happened since.
    event_id: str = Field(max_length=40)
    # The version of the topic's notice this state was given under (ledger.changes
    # .notice_version_given): re-consent is asked when a material version replaced it. None:
    # given while the topic was unbound, or by a writer that records none (imports, the
    # unsubscribe lane); such a subscription counts as given under the version in force at
    # its `occurred_at`.
    notice_version_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("notice_version.id", ondelete="RESTRICT"), nullable=True
        ),
    )


class Suppression(SQLModel, table=True):
    """A contact-wide opt-out of all marketing (`suppressed`), or the record that it was lifted."""

    __tablename__ = "suppression"

    contact_id: int = Field(foreign_key="contact.id", primary_key=True)
    suppressed: bool
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    since: datetime = Field(sa_type=UtcDateTime)
    source: str = Field(max_length=64)
    by_recipient: bool = False


class ErasedAddress(SQLModel, table=True):
    """An erased address, kept only as its keyed hash (audit.keys.AuditKeys.address_hash):
    enough to refuse it again (API, imports) and to answer eligibility `suppressed`, useless to
    anyone without the audit key. Rows are never deleted."""

    __tablename__ = "erased_address"

    address_hash: str = Field(max_length=64, primary_key=True)
    erased_at: datetime = Field(sa_type=UtcDateTime)
