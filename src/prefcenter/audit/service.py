"""Use cases of the audit trail: append an event (gap-free `seq`) and read a contact's history."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, col, select

from prefcenter.audit.models import AuditEvent, AuditHead
from prefcenter.audit.schemas import AuditEventOut, NewEvent
from prefcenter.db import utcnow

HEAD_ID = 1


def append_event(session: Session, new: NewEvent) -> AuditEvent:
    """Append one event in the caller's transaction.

    Taking the next `seq` locks the head row until commit, so every writer serialises here:
    call this last, after all reads and checks, to keep that critical section short.
    """
    seq = session.execute(
        update(AuditHead)
        .where(col(AuditHead.id) == HEAD_ID)
        .values(seq=col(AuditHead.seq) + 1)
        .returning(col(AuditHead.seq))
    ).scalar_one()
    event = AuditEvent(
        seq=seq,
        id=new.id,
        kind=new.kind.value,
        recorded_at=utcnow(),
        occurred_at=new.occurred_at,
        contact_id=new.contact_id,
        topic=new.topic,
        from_status=new.from_status,
        to_status=new.to_status,
        outcome=new.outcome,
        actor=new.actor,
        source=new.source,
        campaign_id=new.campaign_id,
        reason=new.reason,
        evidence=new.evidence,
        context=new.context,
    )
    session.add(event)
    session.flush()
    return event


def event_out(event: AuditEvent) -> AuditEventOut:
    return AuditEventOut.model_validate(event, from_attributes=True)


def events_of_contact(session: Session, contact_id: str) -> list[AuditEventOut]:
    """The contact's whole history, oldest first."""
    rows = session.exec(
        select(AuditEvent).where(AuditEvent.contact_id == contact_id).order_by(col(AuditEvent.seq))
    )
    return [event_out(e) for e in rows]
