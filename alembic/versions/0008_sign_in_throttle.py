"""Failed sign-ins counted per scope for the growing-delay throttle: by client network (an IPv4
address or an IPv6 /64) instead of by single address, and by the device cookie a browser that
signed in before carries.

The table holds only the last day's failures, nothing anyone needs to keep: it is dropped and
created again rather than converted (after an upgrade or a downgrade, past failures stop
counting, once).

Revision ID: 0008_sign_in_throttle
Revises: 0007_free_text_out_of_chain
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0008_sign_in_throttle"
down_revision: str | None = "0007_free_text_out_of_chain"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("admin_sign_in_attempt")
    op.create_table(
        "admin_sign_in_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=32), nullable=True),
        sa.Column("attempted_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_sign_in_attempt"),
    )
    op.create_index(
        "ix_admin_sign_in_attempt_username_attempted_at",
        "admin_sign_in_attempt",
        ["username", "attempted_at"],
    )
    op.create_index(
        "ix_admin_sign_in_attempt_network_attempted_at",
        "admin_sign_in_attempt",
        ["network", "attempted_at"],
    )
    op.create_index(
        "ix_admin_sign_in_attempt_attempted_at", "admin_sign_in_attempt", ["attempted_at"]
    )


def downgrade() -> None:
    op.drop_table("admin_sign_in_attempt")
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
