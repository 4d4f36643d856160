"""The outbox's order per key stays cheap to check: the index that answers "is an earlier
message of this key still queued?" holds queued messages only (it held every message ever
sent before, the whole delivery log).

Revision ID: 0019_outbox_order
Revises: 0018_event_indexes
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_outbox_order"
down_revision: str | None = "0018_event_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_QUEUED = sa.text("status = 'queued' AND ordering_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_outbox_message_ordering_key_status_id", table_name="outbox_message")
    op.create_index(
        "ix_outbox_message_queued_ordering_key_id",
        "outbox_message",
        ["ordering_key", "id"],
        postgresql_where=_QUEUED,
        sqlite_where=_QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_message_queued_ordering_key_id", table_name="outbox_message")
    op.create_index(
        "ix_outbox_message_ordering_key_status_id",
        "outbox_message",
        ["ordering_key", "status", "id"],
    )
