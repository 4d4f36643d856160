"""Sharing topics: the third party a `sharing` topic names (issue 13).

Revision ID: 0013_sharing
Revises: 0012_webhooks
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_sharing"
down_revision: str | None = "0012_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("topic", sa.Column("third_party", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("topic") as batch:
        batch.drop_column("third_party")
