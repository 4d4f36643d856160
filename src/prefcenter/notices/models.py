"""Owns `notice` (what a notice is), `notice_version` (its immutable, dated versions) and
`notice_delivery` (a run that a team sends itself: each recipient and what became of it)."""

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class Notice(SQLModel, table=True):
    __tablename__ = "notice"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=32)  # notices.schemas.NoticeKind
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class NoticeVersion(SQLModel, table=True):
    """Never updated nor deleted once written: consents and the trail name it."""

    __tablename__ = "notice_version"
    __table_args__ = (
        UniqueConstraint("notice_id", "version", name="uq_notice_version_notice_id_version"),
        # "Which version was in force at T": the newest effective_at at or before T.
        Index("ix_notice_version_notice_id_effective_at", "notice_id", "effective_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    notice_id: int = Field(
        sa_column=Column(Integer, ForeignKey("notice.id", ondelete="RESTRICT"), nullable=False)
    )
    version: str = Field(max_length=64)
    language: str = Field(max_length=16)
    url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # SHA-256 of the text (hex, lower case): checked against `text` when it is given.
    sha256: str = Field(max_length=64)
    effective_at: datetime = Field(sa_type=UtcDateTime)
    material: bool
    summary: str = Field(sa_column=Column(Text, nullable=False))
    # Why an effective date sooner than the notice period was accepted (an admin's words).
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    published_at: datetime = Field(sa_type=UtcDateTime)
    published_by: str = Field(max_length=200)
    # The audit event of the publication; the notice mails of its run name it as their cause.
    event_id: str = Field(max_length=40, unique=True)
    # Who sends a material version's notices (notices.schemas.NoticeDelivery): the service's
    # outbox, or the team itself from a CSV export or webhooks (then `notice_delivery`).
    delivery: str = Field(
        default="service",
        sa_column=Column(String(16), nullable=False, server_default="service"),
    )


class NoticeDelivery(SQLModel, table=True):
    """One row per recipient of a run the team sends itself, written set-based when the
    version is published; its status changes only as the team marks it through the API."""

    __tablename__ = "notice_delivery"

    version_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("notice_version.id", ondelete="RESTRICT"), primary_key=True
        )
    )
    contact_id: int = Field(
        sa_column=Column(Integer, ForeignKey("contact.id", ondelete="CASCADE"), primary_key=True)
    )
    status: str = Field(max_length=16)  # notices.schemas.DeliveryStatus
    marked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # The audit event of the last mark that changed it.
    event_id: str | None = Field(default=None, max_length=40)
