"""Outgoing webhooks: endpoints with their signing secrets and event types, and in the outbox
each delivery's endpoint and the key that keeps a contact's deliveries in order.

Revision ID: 0012_webhooks
Revises: 0011_mail_requests
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0012_webhooks"
down_revision: str | None = "0011_mail_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=500), nullable=True),
        sa.Column("disabled_at", UtcDateTime(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_until", UtcDateTime(), nullable=True),
        sa.Column("failing_since", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoint"),
        sa.UniqueConstraint("public_id", name="uq_webhook_endpoint_public_id"),
    )
    op.create_table(
        "webhook_endpoint_event",
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoint.id"],
            name="fk_webhook_endpoint_event_endpoint_id_webhook_endpoint",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("endpoint_id", "event_type", name="pk_webhook_endpoint_event"),
    )
    op.create_index(
        "ix_webhook_endpoint_event_event_type", "webhook_endpoint_event", ["event_type"]
    )
    with op.batch_alter_table("outbox_message") as batch:
        batch.add_column(sa.Column("ordering_key", sa.String(length=80), nullable=True))
        batch.add_column(sa.Column("endpoint_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_outbox_message_endpoint_id_webhook_endpoint",
            "webhook_endpoint",
            ["endpoint_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.create_index(
        "ix_outbox_message_ordering_key_status_id",
        "outbox_message",
        ["ordering_key", "status", "id"],
    )
    op.create_index("ix_outbox_message_endpoint_id_id", "outbox_message", ["endpoint_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_message_endpoint_id_id", table_name="outbox_message")
    op.drop_index("ix_outbox_message_ordering_key_status_id", table_name="outbox_message")
    # Webhook deliveries have no meaning without their endpoints.
    op.execute("DELETE FROM outbox_message WHERE endpoint_id IS NOT NULL")
    with op.batch_alter_table("outbox_message") as batch:
        batch.drop_constraint("fk_outbox_message_endpoint_id_webhook_endpoint", type_="foreignkey")
        batch.drop_column("endpoint_id")
        batch.drop_column("ordering_key")
    op.drop_index("ix_webhook_endpoint_event_event_type", table_name="webhook_endpoint_event")
    op.drop_table("webhook_endpoint_event")
    op.drop_table("webhook_endpoint")
