"""Owns the `topic` table."""

from datetime import datetime

from sqlalchemy import Column, ForeignKey, String
from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime


class Topic(SQLModel, table=True):
    __tablename__ = "topic"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    kind: str = Field(max_length=20)  # TopicKind
    consent: str = Field(max_length=20)  # ConsentModel
    double_opt_in: bool = False
    # A `sharing` topic's party the person's data goes to; None for every other kind.
    third_party: str | None = Field(default=None, max_length=200)
    # The notice the topic is bound to: a material version of it asks for consent again
    # (notices.rules.Reconsent). None: consent to the topic stands whatever notice changes.
    notice_key: str | None = Field(
        default=None,
        sa_column=Column(String(64), ForeignKey("notice.key", ondelete="RESTRICT"), nullable=True),
    )
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
