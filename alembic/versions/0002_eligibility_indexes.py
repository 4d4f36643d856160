"""Eligibility exports: a topic's subscriptions in contact order, with their status.

The audience export of an opt-in topic walks one topic's subscriptions in contact id order
from a keyset position; with only `(topic_id)` SQLite reads every subscription of the topic
for each chunk and sorts, which makes a whole export quadratic.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_subscription_topic_id_contact_id_status"


def upgrade() -> None:
    op.create_index(INDEX, "subscription", ["topic_id", "contact_id", "status"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="subscription")
