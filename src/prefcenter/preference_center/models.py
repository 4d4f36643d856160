"""Owns the recipient pages' table: `mail_request`, the mail a page was asked to send, kept
an hour for the throttle (preference_center.mail_requests)."""

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from prefcenter.audit.context import MAX_NETWORK_LENGTH
from prefcenter.db import UtcDateTime


class MailRequest(SQLModel, table=True):
    """One mail a recipient page was asked to send (sent or not: asking is what is counted)."""

    __tablename__ = "mail_request"
    __table_args__ = (
        Index("ix_mail_request_address", "address_hash", "requested_at"),
        Index("ix_mail_request_network", "network", "requested_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Keyed hash of the normalised address (audit.keys.address_hash), never the address.
    address_hash: str = Field(max_length=64)
    network: str | None = Field(default=None, max_length=MAX_NETWORK_LENGTH)
    requested_at: datetime = Field(sa_type=UtcDateTime, index=True)
