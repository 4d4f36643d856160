"""Reading audit events back, oldest first, with their evidence (empty once erased)."""

from __future__ import annotations

from sqlalchemy import ColumnElement
from sqlalchemy import select as sa_select
from sqlmodel import Session

from prefcenter.audit.canonical import decode_document
from prefcenter.audit.models import AuditEvent, AuditEvidence
from prefcenter.audit.schemas import AuditEventOut, EventKind

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_EVIDENCE = AuditEvidence.__table__  # type: ignore[attr-defined]

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
