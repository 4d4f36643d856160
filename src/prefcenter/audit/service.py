"""Use cases of the audit trail: append an event (gap-free `seq`) and read a contact's history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy import event as sa_event
from sqlalchemy import select as sa_select
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select

from prefcenter.audit.models import AuditEvent, AuditHead
from prefcenter.audit.schemas import AuditEventOut, NewEvent
from prefcenter.db import utcnow

HEAD_ID = 1
# The session's events waiting for its commit (Session.info is per session, i.e. per request).
_PENDING = "prefcenter.audit.pending"
_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_COLUMNS = [c.name for c in _EVENTS.columns if c.name != "seq"]


def append_event(session: Session, new: NewEvent) -> str:
    """Append one event to the caller's transaction; returns its id (known at once).

    The event is written when the transaction commits, as the very last statement before
    COMMIT (`_write_pending`): that is where it takes the next `seq`, which locks the head row
    until COMMIT and so serialises every writer. Taking it here instead would hold that lock
    while the request renders its answer and travels between threads; at commit it is held
    for the insert and the COMMIT alone. Still inside the transaction, so `seq` stays
    gap-free: a transaction that rolls back never took a number. (A query in the same
    transaction does not see the event yet.)
    """
    session.info.setdefault(_PENDING, []).append(new)
    return new.id


def _row(new: NewEvent) -> dict[str, Any]:
    return {
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
        "evidence": new.evidence,
        "context": new.context,
    }


def _next_seq() -> Any:
    return (
        update(AuditHead)
        .where(col(AuditHead.id) == HEAD_ID)
        .values(seq=col(AuditHead.seq) + 1)
        .returning(col(AuditHead.seq))
    )


# PostgreSQL: take the number and insert the event in one statement (one round trip while
# holding the lock), stamped `recorded_at` by the database clock once the lock is held, so
# that `recorded_at` never runs backwards along `seq`, whichever host wrote the event.
_head = _next_seq().cte("head")
_INSERT_WITH_SEQ = insert(_EVENTS).from_select(
    ["seq", "recorded_at", *[c for c in _COLUMNS if c != "recorded_at"]],
    sa_select(
        _head.c.seq,
        func.clock_timestamp(),
        # prefixed: a parameter named like a column of audit_head (`id`) would join its SET
        *[bindparam(f"ev_{c}", type_=_EVENTS.c[c].type) for c in _COLUMNS if c != "recorded_at"],
    ),
)


@sa_event.listens_for(OrmSession, "before_commit")
def _write_pending(session: OrmSession) -> None:
    """Write the session's pending events, last thing before its COMMIT."""
    pending: list[NewEvent] = session.info.pop(_PENDING, [])
    if not pending:
        return
    session.flush()  # every other change first: the head lock is the last one taken
    postgres = session.get_bind().dialect.name == "postgresql"
    for new in pending:
        if postgres:
            session.execute(_INSERT_WITH_SEQ, {f"ev_{k}": v for k, v in _row(new).items()})
        else:
            # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other writers.
            seq = session.execute(_next_seq()).scalar_one()
            session.execute(insert(_EVENTS), {**_row(new), "seq": seq, "recorded_at": utcnow()})


@sa_event.listens_for(OrmSession, "after_rollback")
def _forget_pending(session: OrmSession) -> None:
    session.info.pop(_PENDING, None)


def event_out(event: AuditEvent) -> AuditEventOut:
    return AuditEventOut.model_validate(event, from_attributes=True)


def events_of_contact(session: Session, contact_id: str) -> list[AuditEventOut]:
    """The contact's whole history, oldest first."""
    rows = session.exec(
        select(AuditEvent).where(AuditEvent.contact_id == contact_id).order_by(col(AuditEvent.seq))
    )
    return [event_out(e) for e in rows]
