"""Events coming in: `bounce` (a contact's deliverability state as the ESPs report it) and
`inbound_receipt` (ESP event ids, SNS message ids and Mailgun tokens already taken in).

Revision ID: 0010_inbound_events
Revises: 0009_outbox
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0010_inbound_events"
down_revision: str | None = "0009_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bounce",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("bounced", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("since", UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("lifted_at", UtcDateTime(), nullable=True),
        sa.Column("soft_bounces", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contact.id"], name="fk_bounce_contact_id_contact"
        ),
        sa.PrimaryKeyConstraint("contact_id", name="pk_bounce"),
    )
    op.create_table(
        "inbound_receipt",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_inbound_receipt"),
    )
    op.create_index("ix_inbound_receipt_received_at", "inbound_receipt", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_inbound_receipt_received_at", table_name="inbound_receipt")
    op.drop_table("inbound_receipt")
    op.drop_table("bounce")
