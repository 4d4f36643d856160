"""`audit_evidence.seq` without its foreign key to `audit_event`.

The key checked, row by row, that each evidence row names an event: on PostgreSQL a query per
row that also share-locks the event's row (a lock written into that row), about half of the
5-10 ms a batch of 1,000 consent changes spent writing its evidence, under the audit head's
lock. What it guarded is kept by the code and the database otherwise:
- an evidence row is written only by an append (audit.service, audit.driver_appends), for the
  seqs that append has just taken from the head, in the same transaction and after its events;
- events are never deleted or changed (the append-only triggers of migration 0003 refuse it),
  so no evidence row can lose its event;
- erasure deletes evidence rows by their events' seqs (consent.erasure), and every read joins
  on `seq` explicitly (receipts, the audit queries and export, verification);
- verification holds each event's document to the event's `evidence_digest`, and a document
  missing to its contact's erasure, with or without the key; a row under a seq the head has not
  handed out yet would make that seq's append fail on the primary key, not pass unseen.
`audit_free_text` keeps its key: it is written only for events that have free text.

SQLite drops a constraint by copying the table, which loses its trigger: the one of migration
0003 that refuses updates is made again, as it was.

Revision ID: 0021_evidence_without_fk
Revises: 0020_idempotency_lz4
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021_evidence_without_fk"
down_revision: str | None = "0020_idempotency_lz4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FOREIGN_KEY = "fk_audit_evidence_seq_audit_event"
_SQLITE_TRIGGER = "audit_evidence_no_update"


def _refuse_updates_again() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(f"DROP TRIGGER IF EXISTS {_SQLITE_TRIGGER}")
    op.execute(
        f"CREATE TRIGGER {_SQLITE_TRIGGER} BEFORE UPDATE ON audit_evidence BEGIN SELECT "
        "RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_evidence refused'); END"
    )


def upgrade() -> None:
    with op.batch_alter_table("audit_evidence") as batch:
        batch.drop_constraint(_FOREIGN_KEY, type_="foreignkey")
    _refuse_updates_again()


def downgrade() -> None:
    with op.batch_alter_table("audit_evidence") as batch:
        batch.create_foreign_key(_FOREIGN_KEY, "audit_event", ["seq"], ["seq"])
    _refuse_updates_again()
