"""Owns the `contact` table: an opaque public id, the normalised address, the form it came in."""

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class Contact(SQLModel, table=True):
    __tablename__ = "contact"
    # On PostgreSQL the address's unique index also carries the row id, so that eligibility's
    # address-to-contact probes read the index alone (migration 0006). SQLite's indexes carry
    # the row id anyway.
    __table_args__ = (
        UniqueConstraint("address", name="uq_contact_address", postgresql_include=["id"]),
    )

    id: int | None = Field(default=None, primary_key=True)
    # Random and unguessable: it travels in links and URLs, the row id never does.
    public_id: str = Field(max_length=32, unique=True)
    # Normalised for matching (see contacts.addresses); None once the person is erased.
    address: str | None = Field(default=None, max_length=320)
    # The address as it was first given, for display.
    address_display: str | None = Field(default=None, max_length=320)
    created_at: datetime = Field(sa_type=UtcDateTime)
    erased_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
