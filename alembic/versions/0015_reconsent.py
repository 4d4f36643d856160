"""Re-consent: the notice a topic is bound to, and the notice version a subscription was
given under (issue 13).

Revision ID: 0015_reconsent
Revises: 0014_notices
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_reconsent"
down_revision: str | None = "0014_notices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite adds a column with a foreign key only by rebuilding the table.
    with op.batch_alter_table("topic") as batch:
        batch.add_column(sa.Column("notice_key", sa.String(length=64), nullable=True))
        batch.create_foreign_key(
            "fk_topic_notice_key_notice", "notice", ["notice_key"], ["key"], ondelete="RESTRICT"
        )
    with op.batch_alter_table("subscription") as batch:
        batch.add_column(sa.Column("notice_version_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_subscription_notice_version_id_notice_version",
            "notice_version",
            ["notice_version_id"],
            ["id"],
            ondelete="RESTRICT",
        )


def downgrade() -> None:
    with op.batch_alter_table("subscription") as batch:
        batch.drop_constraint(
            "fk_subscription_notice_version_id_notice_version", type_="foreignkey"
        )
        batch.drop_column("notice_version_id")
    with op.batch_alter_table("topic") as batch:
        batch.drop_constraint("fk_topic_notice_key_notice", type_="foreignkey")
        batch.drop_column("notice_key")
