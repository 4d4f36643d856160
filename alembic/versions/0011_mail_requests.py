"""The recipients' mail-request throttle: `mail_request` holds, for an hour, each mail a
recipient page was asked to send ("email me my link", a resubscribe confirmation), by keyed
hash of the address and by client network.

Revision ID: 0011_mail_requests
Revises: 0010_inbound_events
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0011_mail_requests"
down_revision: str | None = "0010_inbound_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mail_request",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_mail_request_address", "mail_request", ["address_hash", "requested_at"])
    op.create_index("ix_mail_request_network", "mail_request", ["network", "requested_at"])
    op.create_index("ix_mail_request_requested_at", "mail_request", ["requested_at"])


def downgrade() -> None:
    op.drop_index("ix_mail_request_requested_at", table_name="mail_request")
    op.drop_index("ix_mail_request_network", table_name="mail_request")
    op.drop_index("ix_mail_request_address", table_name="mail_request")
    op.drop_table("mail_request")
