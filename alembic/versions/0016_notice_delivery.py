"""Who sends a material version's notices, and the recipients of a run a team sends itself.

Revision ID: 0016_notice_delivery
Revises: 0015_reconsent
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0016_notice_delivery"
down_revision: str | None = "0015_reconsent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notice_version") as batch:
        batch.add_column(
            sa.Column("delivery", sa.String(length=16), nullable=False, server_default="service")
        )
    op.create_table(
        "notice_delivery",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("marked_at", UtcDateTime(), nullable=True),
        sa.Column("event_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["notice_version.id"],
            name="fk_notice_delivery_version_id_notice_version",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contact.id"],
            name="fk_notice_delivery_contact_id_contact",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "contact_id", name="pk_notice_delivery"),
    )


def downgrade() -> None:
    op.drop_table("notice_delivery")
    with op.batch_alter_table("notice_version") as batch:
        batch.drop_column("delivery")
