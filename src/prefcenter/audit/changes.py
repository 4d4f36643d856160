"""Owns the change feed, `GET /v1/changes`: consent events in commit order, from a cursor.

`seq` is a commit-order cursor: each writer takes the next `seq` under the audit head's row
lock as the last statement before its COMMIT and holds that lock until COMMIT (SQLite: the
write lock of BEGIN IMMEDIATE). So the events a reader can see are always every event up to
some `seq`, never one with a hole before it, and "after the last seq I saw" skips nothing.
"""

from __future__ import annotations

import base64
import binascii

from sqlmodel import Session, col

from prefcenter.audit.models import AuditEvent
from prefcenter.audit.query_schemas import ChangesOut
from prefcenter.audit.reading import read_events
from prefcenter.audit.schemas import EventKind, ScopedAuditEventOut
from prefcenter.problems import Unprocessable

# The events of the change feed: consent of contacts, not the catalogue of topics.
CHANGE_KINDS = (EventKind.CONSENT_CHANGE, EventKind.GLOBAL_CONSENT_CHANGE)
CHANGES_LIMIT_DEFAULT = 100
CHANGES_LIMIT_MAX = 1000


class InvalidCursor(Unprocessable):
    slug = "invalid-cursor"
    title = "Invalid cursor"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


START_CURSOR = encode_cursor(0)


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    prefix, _, digits = text.partition(":")
    valid = prefix == "seq" and digits.isascii() and digits.isdigit() and len(digits) <= 18
    # Only the exact text handed out: base64 decoding alone would skip stray characters.
    if not valid or encode_cursor(int(digits)) != cursor:
        raise InvalidCursor(
            "`after` is not a cursor this service handed out; pass a `next` value as is.",
            errors=[{"field": "after", "detail": "is not a valid cursor"}],
        )
    return int(digits)


def read_changes(
    session: Session, *, after: str | None, limit: int, with_evidence: bool
) -> ChangesOut:
    """Consent events after the cursor, oldest first; `next` stays put when caught up.

    `with_evidence` only for a reader of the audit trail: evidence and request context hold
    the person's client address, user agent and whatever proof a caller attached."""
    after_seq = 0 if after is None else decode_cursor(after)
    out = read_events(
        session,
        col(AuditEvent.seq) > after_seq,
        col(AuditEvent.kind).in_([k.value for k in CHANGE_KINDS]),
        limit=limit,
    )
    next_seq = out[-1].seq if out else after_seq
    events = [ScopedAuditEventOut.of(event, with_evidence=with_evidence) for event in out]
    return ChangesOut(events=events, next=encode_cursor(next_seq))
