"""The admin console: admin users (Argon2 password hashes), server-side sessions (only a hash
of each token), and failed sign-ins for the rate limit.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_user"),
        sa.UniqueConstraint("username", name="uq_admin_user_username"),
    )
    op.create_table(
        "admin_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("admin_user_id", sa.Integer(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("csrf_secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["admin_user_id"], ["admin_user.id"], name="fk_admin_session_admin_user_id_admin_user"
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_key.id"], name="fk_admin_session_api_key_id_api_key"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_admin_session"),
    )
    op.create_index("ix_admin_session_admin_user_id", "admin_session", ["admin_user_id"])
    op.create_index("ix_admin_session_api_key_id", "admin_session", ["api_key_id"])
    op.create_index("ix_admin_session_expires_at", "admin_session", ["expires_at"])
    op.create_table(
        "admin_sign_in_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("attempted_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_sign_in_attempt"),
    )
    op.create_index("ix_admin_sign_in_attempt_username", "admin_sign_in_attempt", ["username"])
    op.create_index("ix_admin_sign_in_attempt_client_ip", "admin_sign_in_attempt", ["client_ip"])
    op.create_index(
        "ix_admin_sign_in_attempt_attempted_at", "admin_sign_in_attempt", ["attempted_at"]
    )


def downgrade() -> None:
    op.drop_table("admin_sign_in_attempt")
    op.drop_table("admin_session")
    op.drop_table("admin_user")
