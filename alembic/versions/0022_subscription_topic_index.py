"""`subscription` without its index of `topic_id` alone.

Migration 0002's `(topic_id, contact_id, status)` begins with `topic_id`: every query that
looks subscriptions up by topic (the audience and eligibility exports, a topic's counts, the
key check when a topic goes) is served by it, on both engines, and reads no more of it than
it read of the shorter one. The shorter index served nothing else, and every subscription
written (an import's million, a batch's thousand, each consent change that creates one) paid
for keeping it.

Revision ID: 0022_subscription_topic_index
Revises: 0021_audit_parts_without_fk
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022_subscription_topic_index"
down_revision: str | None = "0021_audit_parts_without_fk"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_subscription_topic_id"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="subscription")


def downgrade() -> None:
    op.create_index(INDEX, "subscription", ["topic_id"])
