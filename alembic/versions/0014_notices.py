"""Notices and their immutable, dated versions.

Revision ID: 0014_notices
Revises: 0013_sharing
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0014_notices"
down_revision: str | None = "0013_sharing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notice"),
        sa.UniqueConstraint("key", name="uq_notice_key"),
    )
    op.create_table(
        "notice_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("notice_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("effective_at", UtcDateTime(), nullable=False),
        sa.Column("material", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.Column("published_by", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(
            ["notice_id"],
            ["notice.id"],
            name="fk_notice_version_notice_id_notice",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notice_version"),
        sa.UniqueConstraint("notice_id", "version", name="uq_notice_version_notice_id_version"),
        sa.UniqueConstraint("event_id", name="uq_notice_version_event_id"),
    )
    op.create_index(
        "ix_notice_version_notice_id_effective_at",
        "notice_version",
        ["notice_id", "effective_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_notice_version_notice_id_effective_at", table_name="notice_version")
    op.drop_table("notice_version")
    op.drop_table("notice")
