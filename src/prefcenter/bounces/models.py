"""Owns the `bounce` table: per contact, whether a bounce is in force, and the soft bounces
counted towards one."""

from datetime import datetime

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class Bounce(SQLModel, table=True):
    """A contact's deliverability state as the ESPs reported it. Derived from its `bounce` and
    `bounce_lifted` audit events; kept as a row so that eligibility is one indexed read."""

    __tablename__ = "bounce"

    contact_id: int = Field(foreign_key="contact.id", primary_key=True)
    # A hard bounce (or soft bounces past the limit) in force: no mail of any kind.
    bounced: bool
    # When the state in force began: the bounce as the ESP dated it, or the lift.
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    # When it was recorded here.
    since: datetime = Field(sa_type=UtcDateTime)
    # The ESP that reported it (`ses`, `sendgrid`, `mailgun`, `postmark`), or `admin`.
    source: str = Field(max_length=64)
    # The audit event that set this state.
    event_id: str = Field(max_length=40)
    # The last lift: a bounce the ESP dates at or before it changes nothing.
    lifted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # The soft bounces counted within the window, as RFC 3339 times separated by spaces (at
    # most the limit less one: the one that reaches it makes the address bounced).
    soft_bounces: str = Field(default="", sa_type=Text)
