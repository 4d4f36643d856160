"""The outbox: every message to the world (the service's own mail first), written in the
transaction of its cause, and every attempt to deliver one.

Revision ID: 0009_outbox
Revises: 0008_sign_in_throttle
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0009_outbox"
down_revision: str | None = "0008_sign_in_throttle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("cause_event_id", sa.String(length=40), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_message"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_message_id"),
    )
    op.create_index("ix_outbox_message_cause_event_id", "outbox_message", ["cause_event_id"])
    op.create_index(
        "ix_outbox_message_status_kind_due_at", "outbox_message", ["status", "kind", "due_at"]
    )
    op.create_table(
        "outbox_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["message"],
            ["outbox_message.id"],
            name="fk_outbox_attempt_message_outbox_message",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_attempt"),
    )
    op.create_index("ix_outbox_attempt_message", "outbox_attempt", ["message"])


def downgrade() -> None:
    op.drop_table("outbox_attempt")
    op.drop_table("outbox_message")
