"""Use cases of the audit trail: append an event to the hash chain (gap-free `seq`) and read
events back with their evidence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, insert, update
from sqlalchemy import event as sa_event
from sqlalchemy import select as sa_select
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col

from prefcenter.audit.canonical import (
    EventValue,
    chain_hash,
    decode_document,
    encode_document,
    encode_event,
    format_time,
)
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent, AuditEvidence, AuditHead
from prefcenter.audit.schemas import AuditEventOut, EventKind, NewEvent
from prefcenter.db import UtcDateTime, settings_of_session, utcnow

HEAD_ID = 1
# The session's events waiting for its commit (Session.info is per session, i.e. per request).
_PENDING = "prefcenter.audit.pending"
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_EVIDENCE = AuditEvidence.__table__  # type: ignore[attr-defined]


def append_event(session: Session, new: NewEvent) -> str:
    """Append one event to the caller's transaction; returns its id (known at once).

    The event is written when the transaction commits, as the very last statement before
    COMMIT (`_write_pending`): that is where it takes the next `seq`, which locks the head row
    until COMMIT and so serialises every writer. Taking it here instead would hold that lock
    while the request renders its answer and travels between threads; at commit it is held
    for the inserts and the COMMIT alone. Still inside the transaction, so `seq` stays
    gap-free: a transaction that rolls back never took a number. (A query in the same
    transaction does not see the event yet.)
    """
    session.info.setdefault(_PENDING, []).append(new)
    return new.id


@dataclass(slots=True)
class _Prepared:
    """An event with everything that does not depend on its place in the chain."""

    values: dict[str, EventValue]  # the canonical object but for seq and recorded_at
    row: dict[str, Any]  # the insert's parameters but for seq, recorded_at, canonical, hash
    document: bytes | None


def _prepare(keys: AuditKeys, new: NewEvent) -> _Prepared:
    document = encode_document(new.context, new.evidence)
    address_hash = keys.address_hash(new.address) if new.address is not None else None
    evidence_digest = keys.evidence_digest(document) if document is not None else None
    row: dict[str, Any] = {
        "id": new.id,
        "kind": new.kind.value,
        "occurred_at": new.occurred_at,
        "contact_id": new.contact_id,
        "topic": new.topic,
        "from_status": new.from_status,
        "to_status": new.to_status,
        "outcome": new.outcome,
        "actor": new.actor,
        "source": new.source,
        "campaign_id": new.campaign_id,
        "reason": new.reason,
        "address_hash": address_hash,
        "evidence_digest": evidence_digest,
    }
    values: dict[str, EventValue] = {**row, "occurred_at": format_time(new.occurred_at)}
    return _Prepared(values=values, row=row, document=document)


def _take_seqs(count: int, *, postgres: bool) -> Any:
    """Move the head `count` places, locking its row until COMMIT; returns the new head seq,
    the hash of the event at the old head and, on PostgreSQL, the time once the lock is held."""
    returned: list[Any] = [col(AuditHead.seq), col(AuditHead.hash)]
    if postgres:
        returned.append(func.clock_timestamp(type_=UtcDateTime()))
    return (
        update(AuditHead)
        .where(col(AuditHead.id) == HEAD_ID)
        .values(seq=col(AuditHead.seq) + count)
        .returning(*returned)
    )


_SET_HEAD_HASH = (
    update(AuditHead).where(col(AuditHead.id) == HEAD_ID).values(hash=bindparam("head_hash"))
)


@sa_event.listens_for(OrmSession, "before_commit")
def _write_pending(session: OrmSession) -> None:
    """Write the session's pending events, last thing before its COMMIT.

    Everything that does not depend on the place in the chain (keyed hashes, evidence
    documents) is built before the head lock is taken; under the lock: one statement that
    takes `count` numbers, then the canonical bytes and hashes in Python, then the inserts
    (set-based, however many events) and the new head hash.
    """
    pending: list[NewEvent] = session.info.pop(_PENDING, [])
    if not pending:
        return
    keys = AuditKeys.from_settings(settings_of_session(session))
    prepared = [_prepare(keys, new) for new in pending]
    session.flush()  # every other change first: the head lock is the last one taken
    postgres = session.get_bind().dialect.name == "postgresql"
    head = session.execute(_take_seqs(len(prepared), postgres=postgres)).one()
    # The time is taken once the lock is held, so `recorded_at` never runs backwards along seq.
    recorded_at: datetime = head[2] if postgres else utcnow()
    recorded_text = format_time(recorded_at)
    seq = head[0] - len(prepared)
    prev_hash = bytes.fromhex(head[1])
    events: list[dict[str, Any]] = []
    documents: list[dict[str, Any]] = []
    for item in prepared:
        seq += 1
        values = item.values
        values["seq"] = seq
        values["recorded_at"] = recorded_text
        canonical = encode_event(values)
        prev_hash = chain_hash(prev_hash, canonical)
        events.append(
            {
                **item.row,
                "seq": seq,
                "recorded_at": recorded_at,
                "canonical": canonical,
                "hash": prev_hash.hex(),
            }
        )
        if item.document is not None:
            documents.append({"seq": seq, "document": item.document})
    session.execute(insert(_EVENTS), events)
    if documents:
        session.execute(insert(_EVIDENCE), documents)
    session.execute(_SET_HEAD_HASH, {"head_hash": prev_hash.hex()})


@sa_event.listens_for(OrmSession, "after_rollback")
def _forget_pending(session: OrmSession) -> None:
    session.info.pop(_PENDING, None)


# --- reading ---------------------------------------------------------------------------------

_OUT_COLUMNS = [
    _EVENTS.c[name]
    for name in (
        "id",
        "seq",
        "kind",
        "contact_id",
        "topic",
        "from_status",
        "to_status",
        "outcome",
        "occurred_at",
        "recorded_at",
        "actor",
        "source",
        "campaign_id",
        "reason",
    )
]


def read_events(
    session: Session, *where: ColumnElement[bool], limit: int | None = None
) -> list[AuditEventOut]:
    """Events matching `where`, oldest first, with their evidence (empty once erased)."""
    statement = (
        sa_select(*_OUT_COLUMNS, _EVIDENCE.c.document)
        .select_from(_EVENTS.outerjoin(_EVIDENCE, _EVIDENCE.c.seq == _EVENTS.c.seq))
        .where(*where)
        .order_by(_EVENTS.c.seq)
        .limit(limit)
    )
    out: list[AuditEventOut] = []
    for row in session.execute(statement):
        fields = row._asdict()
        context, evidence = decode_document(fields.pop("document"))
        fields["kind"] = EventKind(fields["kind"])
        out.append(AuditEventOut(**fields, evidence=evidence, context=context))
    return out


def events_of_contact(session: Session, contact_id: str) -> list[AuditEventOut]:
    """The contact's whole history, oldest first."""
    return read_events(session, _EVENTS.c.contact_id == contact_id)
