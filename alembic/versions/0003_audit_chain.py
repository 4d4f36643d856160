"""The audit chain: every event hash-chained over its stored canonical bytes, its evidence moved
to `audit_evidence` (what erasure may delete), and triggers that refuse to edit the trail.

Existing events are chained in `seq` order, in batches; their addresses and evidence are
hashed with the audit key (PREFCENTER_AUDIT_KEY, or the key file beside a SQLite database).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from prefcenter.audit.canonical import (
    GENESIS_HASH,
    chain_hash,
    decode_document,
    encode_document,
    encode_event,
    format_time,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import UtcDateTime
from prefcenter.settings import Settings

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JsonDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BATCH = 5000
_QUERY_COLUMNS = (
    "id",
    "kind",
    "contact_id",
    "topic",
    "from_status",
    "to_status",
    "outcome",
    "actor",
    "source",
    "campaign_id",
    "reason",
)

# The events as they are before this migration (evidence and context still inline).
_old_events = sa.table(
    "audit_event",
    sa.column("seq", sa.BigInteger()),
    sa.column("recorded_at", UtcDateTime()),
    sa.column("occurred_at", UtcDateTime()),
    *[sa.column(name, sa.String()) for name in _QUERY_COLUMNS],
    sa.column("evidence", JsonDocument),
    sa.column("context", JsonDocument),
    sa.column("address_hash", sa.String()),
    sa.column("evidence_digest", sa.String()),
    sa.column("canonical", sa.LargeBinary()),
    sa.column("hash", sa.String()),
)
_evidence = sa.table(
    "audit_evidence", sa.column("seq", sa.BigInteger()), sa.column("document", sa.LargeBinary())
)
_contact = sa.table(
    "contact", sa.column("public_id", sa.String()), sa.column("address", sa.String())
)
_head = sa.table(
    "audit_head",
    sa.column("id", sa.Integer()),
    sa.column("seq", sa.BigInteger()),
    sa.column("hash", sa.String()),
)

_REFUSAL = "audit trail is append-only"
_PG_TRIGGERS = (
    ("audit_event_append_only", "audit_event", "UPDATE OR DELETE"),
    ("audit_evidence_no_update", "audit_evidence", "UPDATE"),
)
_SQLITE_TRIGGERS = (
    ("audit_event_no_update", "audit_event", "UPDATE"),
    ("audit_event_no_delete", "audit_event", "DELETE"),
    ("audit_evidence_no_update", "audit_evidence", "UPDATE"),
)


def upgrade() -> None:
    # The time of the event at the head's seq, stamped by the append that moves the head.
    op.add_column("audit_head", sa.Column("recorded_at", UtcDateTime(), nullable=True))
    op.create_table(
        "audit_evidence",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["seq"], ["audit_event.seq"], name="fk_audit_evidence_seq_audit_event"
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_evidence"),
    )
    with op.batch_alter_table("audit_event") as batch:
        batch.add_column(sa.Column("address_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("evidence_digest", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("canonical", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    _chain_existing_events()
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("evidence")
        batch.drop_column("context")
        batch.alter_column("canonical", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch.create_index("ix_audit_event_address_hash", ["address_hash"])
    _create_triggers()


def _keys() -> AuditKeys:
    settings = context.config.attributes.get("settings")
    if not isinstance(settings, Settings):
        settings = Settings(database_url=context.config.attributes.get("database_url") or "")
    return AuditKeys.from_settings(settings)


def _old_batches(connection: sa.Connection) -> Iterator[list[Any]]:
    after = 0
    while True:
        rows = connection.execute(
            sa.select(_old_events, _contact.c.address)
            .select_from(
                _old_events.outerjoin(_contact, _contact.c.public_id == _old_events.c.contact_id)
            )
            .where(_old_events.c.seq > after)
            .order_by(_old_events.c.seq)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        yield list(rows)
        after = rows[-1].seq


def _chain_existing_events() -> None:
    connection = op.get_bind()
    if connection.execute(sa.select(sa.func.count()).select_from(_old_events)).scalar_one() == 0:
        return  # nothing to chain: no key needed
    keys = _keys()
    prev_hash = GENESIS_HASH
    last_seq = 0
    set_chain = (
        sa.update(_old_events)
        .where(_old_events.c.seq == sa.bindparam("b_seq"))
        .values(
            address_hash=sa.bindparam("b_address_hash"),
            evidence_digest=sa.bindparam("b_evidence_digest"),
            canonical=sa.bindparam("b_canonical"),
            hash=sa.bindparam("b_hash"),
        )
    )
    for rows in _old_batches(connection):
        updates: list[dict[str, Any]] = []
        documents: list[dict[str, Any]] = []
        for row in rows:
            document = encode_document(row.context or {}, row.evidence or {})
            address_hash = keys.address_hash(row.address) if row.address is not None else None
            digest = keys.evidence_digest(document) if document is not None else None
            values: dict[str, Any] = {name: getattr(row, name) for name in _QUERY_COLUMNS}
            values.update(
                seq=row.seq,
                recorded_at=format_time(row.recorded_at),
                occurred_at=format_time(row.occurred_at),
                address_hash=address_hash,
                evidence_digest=digest,
            )
            canonical = encode_event(values)
            prev_hash = chain_hash(prev_hash, canonical)
            updates.append(
                {
                    "b_seq": row.seq,
                    "b_address_hash": address_hash,
                    "b_evidence_digest": digest,
                    "b_canonical": canonical,
                    "b_hash": prev_hash.hex(),
                }
            )
            if document is not None:
                documents.append({"seq": row.seq, "document": document})
            last_seq = row.seq
        connection.execute(set_chain, updates)
        if documents:
            connection.execute(sa.insert(_evidence), documents)
    connection.execute(
        sa.update(_head).where(_head.c.id == 1).values(seq=last_seq, hash=prev_hash.hex())
    )


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_REFUSAL}: % on % refused', TG_OP, TG_TABLE_NAME "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for name, table, operations in _PG_TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {operations} ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()"
            )
        return
    for name, table, operation in _SQLITE_TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}: {operation} on {table} refused'); END"
        )


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _ in _PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS audit_refuse_change()")
        return
    for name, _, _ in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")


def downgrade() -> None:
    _drop_triggers()
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_index("ix_audit_event_address_hash")
        batch.add_column(
            sa.Column("evidence", JsonDocument, nullable=False, server_default=sa.text("'{}'"))
        )
        batch.add_column(
            sa.Column("context", JsonDocument, nullable=False, server_default=sa.text("'{}'"))
        )
    connection = op.get_bind()
    restore = (
        sa.update(_old_events)
        .where(_old_events.c.seq == sa.bindparam("b_seq"))
        .values(evidence=sa.bindparam("b_evidence"), context=sa.bindparam("b_context"))
    )
    after = 0
    while True:
        rows = connection.execute(
            sa.select(_evidence)
            .where(_evidence.c.seq > after)
            .order_by(_evidence.c.seq)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        params = []
        for row in rows:
            row_context, row_evidence = decode_document(row.document)
            params.append({"b_seq": row.seq, "b_evidence": row_evidence, "b_context": row_context})
        connection.execute(restore, params)
        after = rows[-1].seq
    with op.batch_alter_table("audit_event") as batch:
        batch.alter_column("evidence", existing_type=JsonDocument, server_default=None)
        batch.alter_column("context", existing_type=JsonDocument, server_default=None)
        batch.drop_column("hash")
        batch.drop_column("canonical")
        batch.drop_column("evidence_digest")
        batch.drop_column("address_hash")
    op.drop_table("audit_evidence")
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("recorded_at")
