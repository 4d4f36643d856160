"""Free text out of the chain: events from now on commit to their `reason` and `campaign_id`
only by keyed digests, the text itself in `audit_free_text`, which erasure deletes.

Events already written keep their canonical bytes (format 1, the text in clear) and their
query columns: they were hashed that way, and checkpoints already taken hold those hashes.
Nothing is rewritten, so this is quick on any size of trail. A downgrade is refused once
format 2 events exist: the release before this one can neither show nor verify them.

Revision ID: 0007_free_text_out_of_chain
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_free_text_out_of_chain"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DIGESTS = ("campaign_id_digest", "reason_digest")
_TRIGGER = "audit_free_text_no_update"
_REFUSAL = "audit trail is append-only"


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) on both engines: no table rewrite, and SQLite
    # keeps the append-only triggers (a batch copy of the table would drop them).
    for name in _DIGESTS:
        op.add_column("audit_event", sa.Column(name, sa.String(length=64), nullable=True))
    op.create_table(
        "audit_free_text",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("campaign_id", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.ForeignKeyConstraint(
            ["seq"], ["audit_event.seq"], name="fk_audit_free_text_seq_audit_event"
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_free_text"),
    )
    # Like `audit_evidence`: erasure may delete rows, nothing may change one.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE TRIGGER {_TRIGGER} BEFORE UPDATE ON audit_free_text "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
        )
    else:
        op.execute(
            f"CREATE TRIGGER {_TRIGGER} BEFORE UPDATE ON audit_free_text "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}: UPDATE on audit_free_text refused'); END"
        )


def downgrade() -> None:
    connection = op.get_bind()
    # Format 2 events end in `"v":2}` (audit.canonical); every earlier one in `"v":1}`.
    last_bytes = (
        "substr(canonical, -6)"
        if connection.dialect.name == "sqlite"
        else "substring(canonical FROM octet_length(canonical) - 5)"
    )
    newer = connection.execute(
        sa.text(f"SELECT min(seq) FROM audit_event WHERE {last_bytes} != :v1"),  # noqa: S608
        {"v1": b'"v":1}'},
    ).scalar()
    if newer is not None:
        raise RuntimeError(
            f"audit events from seq {newer} on are in the format of migration 0007 (their free "
            "text out of the chain); the release before it could not verify them. Restore a "
            "backup taken before the upgrade instead of downgrading."
        )
    if connection.dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER} ON audit_free_text")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER}")
    op.drop_table("audit_free_text")
    for name in reversed(_DIGESTS):
        op.drop_column("audit_event", name)
