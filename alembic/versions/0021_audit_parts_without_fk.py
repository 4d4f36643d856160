"""`audit_evidence.seq` and `audit_free_text.seq` without their foreign keys to `audit_event`.

Each key checked, row by row, that a row names an event: on PostgreSQL a query per row that
also share-locks the event's row (a lock written into that row). For a batch of 1,000 consent
changes that was about half of writing their evidence (7 ms of 4-12 ms before, 4 ms after,
in-process), and a free-text row a change (a campaign id) cost as much again (6-12 ms for
1,000 rows with the key, 1.5-4 ms without, in psql); all of it under the audit head's lock,
which every write waits for. What the keys guarded is kept otherwise:
- these rows are written only by an append (audit.service, audit.driver_appends), for the
  seqs that append has just taken from the head, in the same transaction as its events;
- events are never deleted or changed (the append-only triggers of migration 0003 refuse it),
  so no row can lose its event;
- erasure deletes these rows by their events' seqs (consent.erasure), and every read joins
  on `seq` explicitly (receipts, the audit queries and export, the key check, verification);
- verification holds each event's document and free text to the event's keyed digests, and
  one missing to its contact's erasure, with or without the keys; a row under a seq the head
  has not handed out yet would make that seq's append fail on the primary key, not pass
  unseen.

SQLite drops a constraint by copying the table, which loses its trigger: the ones of
migrations 0003 and 0007 that refuse updates are made again, as they were.

Revision ID: 0021_audit_parts_without_fk
Revises: 0020_idempotency_lz4
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021_audit_parts_without_fk"
down_revision: str | None = "0020_idempotency_lz4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each table, its foreign key, and its SQLite trigger that refuses updates.
_TABLES = (
    ("audit_evidence", "fk_audit_evidence_seq_audit_event", "audit_evidence_no_update"),
    ("audit_free_text", "fk_audit_free_text_seq_audit_event", "audit_free_text_no_update"),
)


def _refuse_updates_again(table: str, trigger: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute(
        f"CREATE TRIGGER {trigger} BEFORE UPDATE ON {table} BEGIN SELECT "
        f"RAISE(ABORT, 'audit trail is append-only: UPDATE on {table} refused'); END"
    )


def upgrade() -> None:
    for table, foreign_key, trigger in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(foreign_key, type_="foreignkey")
        _refuse_updates_again(table, trigger)


def downgrade() -> None:
    for table, foreign_key, trigger in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(foreign_key, "audit_event", ["seq"], ["seq"])
        _refuse_updates_again(table, trigger)
