"""Use cases of bounces: record the bounces an ESP reported (many at once, in the caller's
transaction, one audit event each), and lift a bounce with a reason."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, Integer, any_, bindparam
from sqlalchemy import select as core_select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
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
_TABLE = Bounce.__table__  # type: ignore[attr-defined]
BOUNCE_COLUMNS = (
    "bounced",
    "occurred_at",
    "since",
    "source",
    "event_id",
    "lifted_at",
    "soft_bounces",
)


@dataclass(frozen=True, slots=True)
class RecordedBounce:
    report: BounceReport
    decision: BounceDecision
    event_id: str


@dataclass(frozen=True, slots=True)
class StoredBounce:
    """A contact's `bounce` row as read, without the ORM (the hot path of events coming in
    reads it with the contact: inbound.intake)."""

    bounced: bool
    occurred_at: datetime
    since: datetime
    source: str
    event_id: str
    lifted_at: datetime | None
    soft_bounces: str

    @classmethod
    def from_driver_row(cls, values: Sequence[Any]) -> StoredBounce:
        """The row's BOUNCE_COLUMNS as a driver returned them (PostgreSQL's times in the
        session's zone), its times in UTC."""
        bounced, occurred_at, since, source, event_id, lifted_at, soft_bounces = values
        return cls(
            bounced=bounced,
            occurred_at=occurred_at.astimezone(UTC),
            since=since.astimezone(UTC),
            source=source,
            event_id=event_id,
            lifted_at=lifted_at.astimezone(UTC) if lifted_at is not None else None,
            soft_bounces=soft_bounces,
        )

    @property
    def state(self) -> BounceState:
        return BounceState(
            bounced=self.bounced,
            occurred_at=self.occurred_at,
            lifted_at=self.lifted_at,
            soft=parse_soft(self.soft_bounces),
        )


def soft_bounce_policy(settings: Settings) -> SoftBouncePolicy:
    return SoftBouncePolicy(
        limit=settings.soft_bounce_limit, window=timedelta(days=settings.soft_bounce_window_days)
    )


def postgres_session(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _among(session: Session, contact_ids: list[int]) -> Any:
    """`contact_id IN (…)`; on PostgreSQL `= ANY(<one array parameter>)`."""
    if postgres_session(session):
        return col(Bounce.contact_id) == any_(bindparam(None, contact_ids, type_=ARRAY(Integer())))
    return col(Bounce.contact_id).in_(contact_ids)


def stored_bounces(session: Session, contact_ids: Sequence[int]) -> dict[int, StoredBounce]:
    """The `bounce` rows of these contacts (those that have one): one query."""
    if not contact_ids:
        return {}
    rows = session.execute(
        core_select(*(_TABLE.c[name] for name in ("contact_id", *BOUNCE_COLUMNS))).where(
            _among(session, sorted(set(contact_ids)))
        )
    )
    return {row[0]: StoredBounce(*row[1:]) for row in rows}


def _next_row(
    row: StoredBounce | None,
    decision: BounceDecision,
    *,
    source: str,
    event_id: str,
    now: datetime,
) -> StoredBounce:
    """The row after a decision: the state it sets; `since`, `source` and `event_id` change
    when the address changes between bounced and deliverable (or has no row yet)."""
    state = decision.state
    if row is None or row.bounced != state.bounced:
        since, row_source, row_event = now, source, event_id
    else:
        since, row_source, row_event = row.since, row.source, row.event_id
    return StoredBounce(
        bounced=state.bounced,
        occurred_at=state.occurred_at,
        since=since,
        source=row_source,
        event_id=row_event,
        lifted_at=state.lifted_at,
        soft_bounces=format_soft(state.soft),
    )


_UPSERT_PG = """
INSERT INTO bounce (contact_id, bounced, occurred_at, since, source, event_id, lifted_at,
    soft_bounces)
SELECT * FROM unnest(%(contact_id)s::integer[], %(bounced)s::boolean[],
    %(occurred_at)s::timestamptz[], %(since)s::timestamptz[], %(source)s::text[],
    %(event_id)s::text[], %(lifted_at)s::timestamptz[], %(soft_bounces)s::text[])
ORDER BY 1
ON CONFLICT (contact_id) DO UPDATE SET bounced = excluded.bounced,
    occurred_at = excluded.occurred_at, since = excluded.since, source = excluded.source,
    event_id = excluded.event_id, lifted_at = excluded.lifted_at,
    soft_bounces = excluded.soft_bounces
"""


_INSERT_SQLITE = sqlite_insert(_TABLE)
_UPSERT_SQLITE = _INSERT_SQLITE.on_conflict_do_update(
    index_elements=[_TABLE.c.contact_id],
    set_={name: _INSERT_SQLITE.excluded[name] for name in BOUNCE_COLUMNS},
)


def _write_rows(session: Session, rows: Mapping[int, StoredBounce]) -> None:
    """Insert or update these contacts' rows: one statement."""
    if not rows:
        return
    ordered = sorted(rows.items())
    if postgres_session(session):
        params: dict[str, list[Any]] = {"contact_id": [cid for cid, _ in ordered]}
        for name in BOUNCE_COLUMNS:
            params[name] = [getattr(row, name) for _, row in ordered]
        session.connection().exec_driver_sql(_UPSERT_PG, params)
        return
    values = [
        {"contact_id": cid, **{name: getattr(row, name) for name in BOUNCE_COLUMNS}}
        for cid, row in ordered
    ]
    session.execute(_UPSERT_SQLITE, values)


@dataclass(frozen=True, slots=True)
class DecidedBounce:
    """One report decided against its contact's row: the decision, its audit event (written
    for every report, a superseded or counted one too: the trail keeps what the ESP said), and
    the row to write (None: the row stays as it is)."""

    decision: BounceDecision
    event: NewEvent
    row: StoredBounce | None


def decide_report(
    row: StoredBounce | None, report: BounceReport, *, policy: SoftBouncePolicy, now: datetime
) -> DecidedBounce:
    """What one report does to the contact's `bounce` row as read (`row`; None: it has none).
    Pure but for the new event's id; every writer of bounces decides through it."""
    decision = decide_bounce(
        row.state if row is not None else None,
        report.kind,
        report.occurred_at,
        policy=policy,
        now=now,
    )
    event_id = new_event_id()
    after: StoredBounce | None = None
    if decision.outcome is not BounceOutcome.SUPERSEDED:
        after = _next_row(row, decision, source=report.source, event_id=event_id, now=now)
        if after == row:  # bounced already: nothing to write
            after = None
    context: dict[str, Any] = {"bounce": report.kind.value, **report.context}
    if decision.soft_count:
        context["soft_bounces_in_window"] = decision.soft_count
    if decision.occurred_at != report.occurred_at:
        context["claimed_occurred_at"] = report.occurred_at.isoformat()
    event = NewEvent(
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
    )
    return DecidedBounce(decision=decision, event=event, row=after)


def record_bounces(
    session: Session,
    reports: Sequence[BounceReport],
    *,
    policy: SoftBouncePolicy,
    now: datetime,
    stored: Mapping[int, StoredBounce] | None = None,
) -> list[RecordedBounce]:
    """Decide each report in order against the state the ones before it left, write each
    contact's final state and append one audit event per report (a superseded or counted one
    too: the trail keeps what the ESP said). The contacts must be locked by the caller, who
    may hand in their rows as read with them (`stored`: every contact's, none for those
    without one); else they are read here.

    Set-based: one query reads every contact's row (unless handed in), one statement writes
    the changed ones (none when nothing changed), and the events are appended together at
    commit (audit.service)."""
    rows = (
        dict(stored)
        if stored is not None
        else stored_bounces(session, [r.contact.id for r in reports])
    )
    recorded: list[RecordedBounce] = []
    changed: dict[int, StoredBounce] = {}
    for report in reports:
        contact_id = report.contact.id
        row = rows.get(contact_id)
        decided = decide_report(row, report, policy=policy, now=now)
        if decided.row is not None:
            rows[contact_id] = changed[contact_id] = decided.row
        append_event(session, decided.event)
        recorded.append(
            RecordedBounce(report=report, decision=decided.decision, event_id=decided.event.id)
        )
    _write_rows(session, changed)
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
    row = stored_bounces(session, [contact.id]).get(contact.id)
    decision = decide_lift(row.state if row is not None else None, now=now)
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
    _write_rows(
        session,
        {contact.id: _next_row(row, decision, source=LIFT_SOURCE, event_id=event_id, now=now)},
    )
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
