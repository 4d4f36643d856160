"""The events table keeps only the indexes a query of the contract needs: no index of event ids.

Every index of `audit_event` is written by every append. Those kept each serve a query of the
contract: the primary key `seq` (the chain, `/v1/changes`, every page's cursor), and one per
`/v1/audit` filter, ending in `seq` (migration 0005): `address_hash` and `contact_id` (the
`email` filter; `contact_id` also a contact's history and its receipt), `topic`, `source`,
`actor`, and `recorded_at` (`since`/`until`). The unique index of `id` served none: a receipt
reads the events of its contact (by `contact_id`), and an id is a UUID, unique by construction.
Its random key cost every append a write at a random place of a large index (an import of 1M
rows, 1M of them).

Revision ID: 0018_event_indexes
Revises: 0016_notice_delivery
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018_event_indexes"
down_revision: str | None = "0016_notice_delivery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# SQLite drops a constraint by copying the table, which loses its triggers: the append-only
# ones of migration 0003 are made again, as they were.
_SQLITE_TRIGGERS = (("audit_event_no_update", "UPDATE"), ("audit_event_no_delete", "DELETE"))


def _append_only_again() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, operation in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {operation} ON audit_event BEGIN SELECT "
            f"RAISE(ABORT, 'audit trail is append-only: {operation} on audit_event refused'); END"
        )


def upgrade() -> None:
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_constraint("uq_audit_event_id", type_="unique")
    _append_only_again()


def downgrade() -> None:
    with op.batch_alter_table("audit_event") as batch:
        batch.create_unique_constraint("uq_audit_event_id", ["id"])
    _append_only_again()
