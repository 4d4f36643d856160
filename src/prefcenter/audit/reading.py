"""Reading audit events back, oldest first, with their evidence and free text (empty once
erased)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func
from sqlalchemy import select as sa_select
from sqlmodel import Session

from prefcenter.audit.canonical import FREE_TEXT_FIELDS, QUERY_COLUMNS, decode_document
from prefcenter.audit.models import AuditEvent, AuditEvidence, AuditFreeText
from prefcenter.audit.schemas import AuditEventOut, EventKind

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_EVIDENCE = AuditEvidence.__table__  # type: ignore[attr-defined]
_FREE_TEXT = AuditFreeText.__table__  # type: ignore[attr-defined]

# A free-text field is in `audit_free_text` (events since migration 0007) or in the event's
# own column (earlier ones, whose chain holds it in clear); verification holds the other null.
_OUT_COLUMNS = [
    func.coalesce(_FREE_TEXT.c[name], _EVENTS.c[name]).label(name)
    if name in FREE_TEXT_FIELDS
    else _EVENTS.c[name]
    for name in QUERY_COLUMNS
]
_FROM = _EVENTS.outerjoin(_EVIDENCE, _EVIDENCE.c.seq == _EVENTS.c.seq).outerjoin(
    _FREE_TEXT, _FREE_TEXT.c.seq == _EVENTS.c.seq
)


def read_events(
    session: Session, *where: ColumnElement[bool], limit: int | None = None
) -> list[AuditEventOut]:
    """Events matching `where`, oldest first, with their evidence and free text (empty and
    null once erased)."""
    statement = (
        sa_select(*_OUT_COLUMNS, _EVIDENCE.c.document)
        .select_from(_FROM)
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
