"""Owns the change feed, `GET /v1/changes`: consent events in commit order, from a cursor.

`seq` is a commit-order cursor: each writer takes the next `seq` under the audit head's row
lock as the last statement before its COMMIT and holds that lock until COMMIT (SQLite: the
write lock of BEGIN IMMEDIATE). So the events a reader can see are always every event up to
some `seq`, never one with a hole before it, and "after the last seq I saw" skips nothing.
"""

from __future__ import annotations

from sqlmodel import Session, col

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.query_schemas import ChangesOut
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import EventKind, ScopedAuditEventOut
from prefcenter.cursors import SeqCursor

# The events of the change feed: consent of contacts, not the catalogue of topics.
CHANGE_KINDS = (EventKind.CONSENT_CHANGE, EventKind.GLOBAL_CONSENT_CHANGE)
CHANGES_LIMIT_DEFAULT = 100
CHANGES_LIMIT_MAX = 1000


# `seq` in the cursor's text, as the first feed wrote it: cursors handed out stay valid.
CHANGES_CURSOR = SeqCursor(kind="seq", field="after")
START_CURSOR = CHANGES_CURSOR.encode(0)


def read_changes(
    session: Session, *, after: str | None, limit: int, with_evidence: bool
) -> ChangesOut:
    """Consent events after the cursor, oldest first; `next` stays put when caught up.

    `with_evidence` only for a reader of the audit trail: evidence and request context hold
    the person's client address, user agent and whatever proof a caller attached."""
    after_seq = 0 if after is None else CHANGES_CURSOR.decode(after)
    out = read_events(
        session,
        col(AuditEvent.seq) > after_seq,
        col(AuditEvent.kind).in_([k.value for k in CHANGE_KINDS]),
        limit=limit,
    )
    next_seq = out[-1].seq if out else after_seq
    events = [ScopedAuditEventOut.of(event, with_evidence=with_evidence) for event in out]
    return ChangesOut(events=events, next=CHANGES_CURSOR.encode(next_seq))
