"""Use cases of bounces: record the bounces an ESP reported (many at once, in the caller's
transaction, one audit event each), and lift a bounce with a reason."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from prefcenter.audit.schemas import EventKind, NewEvent, new_event_id
from prefcenter.audit.service import append_event
from prefcenter.bounces.errors import BounceContactNotFound
from prefcenter.bounces.models import Bounce
from prefcenter.bounces.rules import (
    BounceDecision,
    BounceOutcome,
    BounceState,
    SoftBouncePolicy,
    decide_bounce,
    decide_lift,
    format_soft,
    parse_soft,
)
from prefcenter.bounces.schemas import BounceLiftOut, BounceOut, BounceReport
from prefcenter.contacts.service import lock_contact_by_public_id
from prefcenter.settings import Settings

LIFT_SOURCE = "admin"
# What contacts.service.new_public_id makes; anything else cannot exist.
_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class RecordedBounce:
    report: BounceReport
    decision: BounceDecision
    event_id: str


def soft_bounce_policy(settings: Settings) -> SoftBouncePolicy:
    return SoftBouncePolicy(
        limit=settings.soft_bounce_limit, window=timedelta(days=settings.soft_bounce_window_days)
    )


def _state(row: Bounce | None) -> BounceState | None:
    if row is None:
        return None
    return BounceState(
        bounced=row.bounced,
        occurred_at=row.occurred_at,
        lifted_at=row.lifted_at,
        soft=parse_soft(row.soft_bounces),
    )


def _rows_of(session: Session, contact_ids: Sequence[int]) -> dict[int, Bounce]:
    if not contact_ids:
        return {}
    rows = session.exec(select(Bounce).where(col(Bounce.contact_id).in_(sorted(set(contact_ids)))))
    return {row.contact_id: row for row in rows}


def _write(
    row: Bounce | None,
    contact_id: int,
    decision: BounceDecision,
    *,
    source: str,
    event_id: str,
    now: datetime,
) -> Bounce:
    state = decision.state
    if row is None:
        row = Bounce(
            contact_id=contact_id,
            bounced=state.bounced,
            occurred_at=state.occurred_at,
            since=now,
            source=source,
            event_id=event_id,
        )
    if row.bounced != state.bounced:
        row.since = now
        row.source = source
        row.event_id = event_id
    row.bounced = state.bounced
    row.occurred_at = state.occurred_at
    row.lifted_at = state.lifted_at
    row.soft_bounces = format_soft(state.soft)
    return row


def record_bounces(
    session: Session,
    reports: Sequence[BounceReport],
    *,
    policy: SoftBouncePolicy,
    now: datetime,
) -> list[RecordedBounce]:
    """Decide each report in order against the state the ones before it left, write each
    contact's final state and append one audit event per report (a superseded or counted one
    too: the trail keeps what the ESP said). The contacts must be locked by the caller.

    Set-based: one query reads every contact's row, the writes go out in one flush, and the
    events are appended together at commit (audit.service)."""
    rows = _rows_of(session, [r.contact.id for r in reports])
    states: dict[int, BounceState | None] = {cid: _state(row) for cid, row in rows.items()}
    recorded: list[RecordedBounce] = []
    changed: dict[int, Bounce] = {}
    for report in reports:
        contact_id = report.contact.id
        decision = decide_bounce(
            states.get(contact_id), report.kind, report.occurred_at, policy=policy, now=now
        )
        event_id = new_event_id()
        if decision.outcome is not BounceOutcome.SUPERSEDED:
            states[contact_id] = decision.state
            changed[contact_id] = _write(
                changed.get(contact_id) or rows.get(contact_id),
                contact_id,
                decision,
                source=report.source,
                event_id=event_id,
                now=now,
            )
        context: dict[str, Any] = {"bounce": report.kind.value, **report.context}
        if decision.soft_count:
            context["soft_bounces_in_window"] = decision.soft_count
        if decision.occurred_at != report.occurred_at:
            context["claimed_occurred_at"] = report.occurred_at.isoformat()
        append_event(
            session,
            NewEvent(
                id=event_id,
                kind=EventKind.BOUNCE,
                occurred_at=decision.occurred_at,
                actor=report.actor,
                source=report.source,
                outcome=decision.outcome.value,
                contact_id=report.contact.public_id,
                address=report.contact.address,
                from_status=decision.from_status.value,
                to_status=decision.status.value,
                evidence=report.evidence,
                context=context,
            ),
        )
        recorded.append(RecordedBounce(report=report, decision=decision, event_id=event_id))
    session.add_all(changed.values())
    session.flush()
    return recorded


def lift_bounce(
    session: Session,
    public_id: str,
    *,
    reason: str,
    actor: str,
    context: dict[str, Any],
    now: datetime,
) -> BounceLiftOut:
    """Make a bounced address deliverable again, with the admin's reason in the trail. Soft
    bounces counted so far are forgotten, and bounces the ESPs date at or before now no
    longer count (a late webhook cannot undo the lift). Lifting an address that is not
    bounced changes nothing and writes no event."""
    contact = (
        lock_contact_by_public_id(session, public_id) if _PUBLIC_ID.fullmatch(public_id) else None
    )
    if contact is None or contact.id is None:
        raise BounceContactNotFound(f"There is no contact {public_id!r}, or it was erased.")
    row = session.get(Bounce, contact.id)
    decision = decide_lift(_state(row), now=now)
    if decision.outcome is not BounceOutcome.APPLIED:
        return BounceLiftOut(
            contact_id=contact.public_id, bounced=False, changed=False, event_id=None
        )
    event_id = append_event(
        session,
        NewEvent(
            kind=EventKind.BOUNCE_LIFTED,
            occurred_at=now,
            actor=actor,
            source=LIFT_SOURCE,
            outcome=decision.outcome.value,
            contact_id=contact.public_id,
            address=contact.address,
            from_status=decision.from_status.value,
            to_status=decision.status.value,
            reason=reason,
            context=context,
        ),
    )
    session.add(_write(row, contact.id, decision, source=LIFT_SOURCE, event_id=event_id, now=now))
    session.flush()
    return BounceLiftOut(
        contact_id=contact.public_id, bounced=False, changed=True, event_id=event_id
    )


def bounce_of(session: Session, contact_id: int) -> BounceOut | None:
    """The contact's bounce state, or None when no ESP ever reported one."""
    row = session.get(Bounce, contact_id)
    if row is None:
        return None
    return BounceOut(
        bounced=row.bounced,
        since=row.since,
        source=row.source,
        soft_bounces=len(parse_soft(row.soft_bounces)),
    )


def bounced_among(session: Session, contact_ids: Sequence[int]) -> set[int]:
    """Which of these contacts are bounced: one query."""
    if not contact_ids:
        return set()
    rows = session.exec(
        select(Bounce.contact_id).where(
            col(Bounce.contact_id).in_(sorted(set(contact_ids))), col(Bounce.bounced)
        )
    )
    return set(rows)
