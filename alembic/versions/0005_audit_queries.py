"""Audit queries and erasure: an index per `/v1/audit` filter, and `erased_address`.

Each filter's index leads with its column and ends with `seq`, so that a page (`seq > cursor
ORDER BY seq LIMIT n`) is one range scan of the index, however many events match; the
single-column indexes they replace are dropped (a prefix of the new ones). `recorded_at`
serves `since`/`until`. `erased_address` keeps an erased address as its keyed hash only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from prefcenter.db import UtcDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLACED = {
    "ix_audit_event_address_hash": ["address_hash"],
    "ix_audit_event_contact_id": ["contact_id"],
    "ix_audit_event_topic": ["topic"],
}
INDEXES = {
    "ix_audit_event_address_hash_seq": ["address_hash", "seq"],
    "ix_audit_event_contact_id_seq": ["contact_id", "seq"],
    "ix_audit_event_topic_seq": ["topic", "seq"],
    "ix_audit_event_source_seq": ["source", "seq"],
    "ix_audit_event_actor_seq": ["actor", "seq"],
    "ix_audit_event_recorded_at": ["recorded_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "audit_event", columns)
    for name in REPLACED:
        op.drop_index(name, table_name="audit_event")
    op.create_table(
        "erased_address",
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("erased_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", name="pk_erased_address"),
    )


def downgrade() -> None:
    op.drop_table("erased_address")
    for name, columns in REPLACED.items():
        op.create_index(name, "audit_event", columns)
    for name in INDEXES:
        op.drop_index(name, table_name="audit_event")
