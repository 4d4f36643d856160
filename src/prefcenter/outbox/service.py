"""Use cases of the outbox: queue a message in the caller's transaction; claim due messages
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, so any number of workers share the queue; SQLite's
one writer claims one worker at a time); record each attempt; release what was not tried."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, literal_column, or_, update
from sqlalchemy import select as core_select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.outbox.rules import MAIL_RETRY_SCHEDULE, WEBHOOK_RETRY_SCHEDULE, after_attempt
from prefcenter.outbox.schemas import (
    Attempted,
    AttemptOutcome,
    Claimed,
    OutboxKind,
    OutboxStatus,
)

_MESSAGES = OutboxMessage.__table__  # type: ignore[attr-defined]
_ATTEMPTS = OutboxAttempt.__table__  # type: ignore[attr-defined]
# What an error may take of a row: a relay's answer is a few lines at most.
MAX_ERROR_CHARS = 2000

SCHEDULES: dict[OutboxKind, tuple[timedelta, ...]] = {
    OutboxKind.MAIL: MAIL_RETRY_SCHEDULE,
    OutboxKind.WEBHOOK: WEBHOOK_RETRY_SCHEDULE,
}


def enqueue(
    session: Session,
    *,
    kind: OutboxKind,
    message_id: str,
    payload: dict[str, Any],
    now: datetime,
    cause_event_id: str | None = None,
) -> OutboxMessage:
    """Queue a message in the caller's transaction: it exists if, and only if, the change
    that causes it commits. Due at once."""
    row = OutboxMessage(
        kind=kind.value,
        message_id=message_id,
        cause_event_id=cause_event_id,
        payload=payload,
        status=OutboxStatus.QUEUED.value,
        created_at=now,
        due_at=now,
    )
    session.add(row)
    session.flush()
    return row


_EARLIER = _MESSAGES.alias("earlier")
# Written into the SQL, not bound: a partial index (models.OutboxMessage) is used only when the
# query's own text implies its condition, which a parameter's value does not (SQLite, and
# PostgreSQL's generic plans).
_QUEUED_SQL: ColumnElement[str] = literal_column(f"'{OutboxStatus.QUEUED.value}'")


def _due(kinds: Collection[OutboxKind], now: datetime) -> Any:
    return (
        (_MESSAGES.c.status == OutboxStatus.QUEUED.value)
        & _MESSAGES.c.kind.in_([k.value for k in kinds])
        & (_MESSAGES.c.due_at <= now)
        & or_(_MESSAGES.c.claimed_until.is_(None), _MESSAGES.c.claimed_until <= now)
        # In order per key, the oldest unfinished first: while an earlier message of its
        # key is queued (due later because it is being retried, or claimed by any worker),
        # a message waits. Read from committed rows, and a message leaves `queued` only once
        # it is finished, so it holds for any number of workers; NULL keys never match.
        & ~core_select(_EARLIER.c.id)
        .where(
            _EARLIER.c.ordering_key == _MESSAGES.c.ordering_key,
            _EARLIER.c.status == _QUEUED_SQL,
            _EARLIER.c.id < _MESSAGES.c.id,
        )
        .exists()
    )


def any_due(session: Session, *, kinds: Collection[OutboxKind], now: datetime) -> bool:
    """A read: whether claiming could find anything (an idle SQLite worker then takes no
    write lock)."""
    found = session.execute(core_select(_MESSAGES.c.id).where(_due(kinds, now)).limit(1)).first()
    return found is not None


def claim_due(
    session: Session,
    *,
    kinds: Collection[OutboxKind],
    now: datetime,
    limit: int,
    claim: str,
    lease: timedelta,
    only: Collection[int] | None = None,
) -> list[Claimed]:
    """Claim up to `limit` due messages, oldest due first, until `now + lease`.

    On PostgreSQL the rows are picked `FOR UPDATE SKIP LOCKED`: concurrent claimers pass over
    each other's rows instead of waiting for them, and a row another one committed a claim on
    in the meantime is checked again and left out. SQLite has no row locks; its writers take
    turns, so one claim at a time. `only`: just these messages (`prefcenter mail test`).
    """
    picked = (
        core_select(_MESSAGES.c.id)
        .where(_due(kinds, now))
        .order_by(_MESSAGES.c.due_at, _MESSAGES.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if only is not None:
        picked = picked.where(_MESSAGES.c.id.in_(list(only)))
    rows = list(
        session.execute(
            update(_MESSAGES)
            .where(_MESSAGES.c.id.in_(picked.scalar_subquery()))
            .values(claimed_by=claim, claimed_until=now + lease)
            .returning(
                _MESSAGES.c.id,
                _MESSAGES.c.kind,
                _MESSAGES.c.message_id,
                _MESSAGES.c.cause_event_id,
                _MESSAGES.c.payload,
                _MESSAGES.c.created_at,
                _MESSAGES.c.attempts,
                _MESSAGES.c.due_at,
                _MESSAGES.c.endpoint_id,
            )
        )
    )
    rows.sort(key=lambda row: (row.due_at, row.id))
    return [
        Claimed(
            id=row.id,
            kind=OutboxKind(row.kind),
            message_id=row.message_id,
            cause_event_id=row.cause_event_id,
            payload=row.payload,
            created_at=row.created_at,
            attempts=row.attempts,
            endpoint_id=row.endpoint_id,
        )
        for row in rows
    ]


def release(session: Session, ids: Collection[int], *, claim: str) -> None:
    """Give back claimed messages that were not tried (a worker stopping): due again at once."""
    if not ids:
        return
    session.execute(
        update(_MESSAGES)
        .where(_MESSAGES.c.id.in_(list(ids)), _MESSAGES.c.claimed_by == claim)
        .values(claimed_by=None, claimed_until=None)
    )


@dataclass(frozen=True, slots=True)
class Recorded:
    # The messages this call marked sent, for their audit events: one that another worker
    # took over after this one's claim ran out, and marked sent first, is not counted twice.
    marked_sent: set[int] = field(default_factory=set)
    outcomes: Counter[AttemptOutcome] = field(default_factory=Counter)


def record_attempts(
    session: Session,
    attempts: Sequence[Attempted],
    *,
    claim: str,
    worker: str,
    draw: Callable[[], float] = random.random,
) -> Recorded:
    """Keep every attempt and move each message on (sent, retried later, given up, dropped).
    A failure moves a message only under this worker's own claim."""
    if not attempts:
        return Recorded()
    outcomes: Counter[AttemptOutcome] = Counter()
    attempt_rows: list[dict[str, Any]] = []
    sent: list[int] = []
    others: list[dict[str, Any]] = []
    for attempted in attempts:
        message = attempted.message
        number = message.attempts + 1
        step = after_attempt(
            attempted.outcome,
            attempt_number=number,
            finished_at=attempted.finished_at,
            schedule=SCHEDULES[message.kind],
            draw=draw(),
        )
        error = _clip(attempted.error)
        outcomes[step.outcome] += 1
        attempt_rows.append(
            {
                "message": message.id,
                "number": number,
                "started_at": attempted.started_at,
                "finished_at": attempted.finished_at,
                "outcome": step.outcome.value,
                "error": error,
                "worker": worker,
            }
        )
        if step.status is OutboxStatus.SENT:
            sent.append(message.id)
            continue
        due_at = step.due_at or attempted.finished_at
        if step.status is OutboxStatus.QUEUED and attempted.not_before is not None:
            due_at = max(due_at, attempted.not_before)
        others.append(
            {
                "b_id": message.id,
                "b_status": step.status.value,
                "b_due_at": due_at,
                "b_error": error,
                "b_finished_at": None
                if step.status is OutboxStatus.QUEUED
                else attempted.finished_at,
            }
        )
    session.execute(insert(_ATTEMPTS), attempt_rows)
    marked: set[int] = set()
    if sent:
        finished_at = max(a.finished_at for a in attempts)
        marked = set(
            session.scalars(
                update(_MESSAGES)
                .where(
                    _MESSAGES.c.id.in_(sent),
                    _MESSAGES.c.status == OutboxStatus.QUEUED.value,
                )
                .values(
                    status=OutboxStatus.SENT.value,
                    attempts=_MESSAGES.c.attempts + 1,
                    finished_at=finished_at,
                    last_error=None,
                    claimed_by=None,
                    claimed_until=None,
                )
                .returning(_MESSAGES.c.id)
            )
        )
    if others:
        session.execute(
            update(_MESSAGES)
            .where(
                _MESSAGES.c.id == bindparam("b_id"),
                _MESSAGES.c.claimed_by == claim,
                _MESSAGES.c.status == OutboxStatus.QUEUED.value,
            )
            .values(
                status=bindparam("b_status"),
                attempts=_MESSAGES.c.attempts + 1,
                due_at=bindparam("b_due_at"),
                last_error=bindparam("b_error"),
                finished_at=bindparam("b_finished_at"),
                claimed_by=None,
                claimed_until=None,
            ),
            others,
        )
        _hold_back_followers(
            session,
            [(o["b_id"], o["b_due_at"]) for o in others if o["b_status"] == _QUEUED_VALUE],
        )
    return Recorded(marked_sent=marked, outcomes=outcomes)


_QUEUED_VALUE = OutboxStatus.QUEUED.value
_HEAD = _MESSAGES.alias("head")


def _hold_back_followers(session: Session, retried: list[tuple[int, datetime]]) -> None:
    """A message put back for a retry is due no sooner than then, and neither is any later
    message of its key: they get its due time, so a claim's scan of due messages (by
    `due_at`) passes over them instead of reading each one and finding it held back. Only a
    cost: `_due` alone decides the order, also for a message queued after this."""
    if not retried:
        return
    session.execute(
        update(_MESSAGES)
        .where(
            _MESSAGES.c.ordering_key
            == core_select(_HEAD.c.ordering_key)
            .where(_HEAD.c.id == bindparam("h_id"))
            .scalar_subquery(),
            _MESSAGES.c.status == _QUEUED_SQL,
            _MESSAGES.c.id > bindparam("h_id"),
            _MESSAGES.c.due_at < bindparam("h_due_at"),
        )
        .values(due_at=bindparam("h_due_at")),
        [{"h_id": head, "h_due_at": due_at} for head, due_at in retried],
    )


def _clip(error: str | None) -> str | None:
    if error is None:
        return None
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"


def latest_for_cause(
    session: Session,
    cause_event_id: str,
    *,
    kind: OutboxKind,
    status: OutboxStatus | None = None,
) -> OutboxMessage | None:
    """The newest message of `kind` (and `status`) that the event `cause_event_id` caused."""
    query = select(OutboxMessage).where(
        col(OutboxMessage.cause_event_id) == cause_event_id,
        col(OutboxMessage.kind) == kind.value,
    )
    if status is not None:
        query = query.where(col(OutboxMessage.status) == status.value)
    return session.exec(query.order_by(col(OutboxMessage.id).desc()).limit(1)).first()


def newest(session: Session, *, limit: int, kind: OutboxKind | None = None) -> list[OutboxMessage]:
    query = select(OutboxMessage)
    if kind is not None:
        query = query.where(col(OutboxMessage.kind) == kind.value)
    return list(session.exec(query.order_by(col(OutboxMessage.id).desc()).limit(limit)))


def status_counts(session: Session, *, kind: OutboxKind | None = None) -> dict[OutboxStatus, int]:
    counts = dict.fromkeys(OutboxStatus, 0)
    query = core_select(_MESSAGES.c.status, func.count())
    if kind is not None:
        query = query.where(_MESSAGES.c.kind == kind.value)
    for status, count in session.execute(query.group_by(_MESSAGES.c.status)):
        counts[OutboxStatus(status)] = count
    return counts


def attempts_of(session: Session, message: int) -> list[OutboxAttempt]:
    return list(
        session.exec(
            select(OutboxAttempt)
            .where(col(OutboxAttempt.message) == message)
            .order_by(col(OutboxAttempt.number), col(OutboxAttempt.id))
        )
    )
