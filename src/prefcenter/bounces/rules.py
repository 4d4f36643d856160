"""Owns the pure rules of bounces: what a hard or soft bounce does to an address's state, and
when an admin's lift applies.

No database here: plain values in, a decision out, tested without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class BounceKind(StrEnum):
    HARD = "hard"  # the address does not exist, or the domain refuses it for good
    SOFT = "soft"  # a full mailbox, a greylisting or unreachable server: counted


class BounceStatus(StrEnum):
    """As the audit events name the state (`from_status`, `to_status`)."""

    BOUNCED = "bounced"
    DELIVERABLE = "deliverable"


class BounceOutcome(StrEnum):
    """The same words as a consent change's outcome."""

    APPLIED = "applied"  # the address became bounced (or the bounce was lifted)
    UNCHANGED = "unchanged"  # bounced already, or a soft bounce counted below the limit
    SUPERSEDED = "superseded"  # dated at or before the last lift: recorded, changes nothing


@dataclass(frozen=True, slots=True)
class SoftBouncePolicy:
    limit: int  # this many soft bounces within `window` make the address bounced
    window: timedelta


@dataclass(frozen=True, slots=True)
class BounceState:
    bounced: bool
    occurred_at: datetime
    lifted_at: datetime | None
    soft: tuple[datetime, ...]  # the soft bounces counted, oldest first


@dataclass(frozen=True, slots=True)
class BounceDecision:
    outcome: BounceOutcome
    from_status: BounceStatus
    state: BounceState  # after the event (the state as it was, unless applied or counted)
    occurred_at: datetime  # the event's time, clamped to now
    soft_count: int  # soft bounces within the window, this one included (0 for a hard one)

    @property
    def status(self) -> BounceStatus:
        return BounceStatus.BOUNCED if self.state.bounced else BounceStatus.DELIVERABLE

    @property
    def became_bounced(self) -> bool:
        return self.outcome is BounceOutcome.APPLIED and self.state.bounced


NEVER_BOUNCED = BounceState(
    bounced=False, occurred_at=datetime.min.replace(tzinfo=UTC), lifted_at=None, soft=()
)


def _status(state: BounceState) -> BounceStatus:
    return BounceStatus.BOUNCED if state.bounced else BounceStatus.DELIVERABLE


def decide_bounce(
    current: BounceState | None,
    kind: BounceKind,
    occurred_at: datetime,
    *,
    policy: SoftBouncePolicy,
    now: datetime,
) -> BounceDecision:
    """A bounce dated in the future counts as now (a clock ahead of ours). One dated at or
    before the last lift is superseded: the admin lifted it knowing of it (a late webhook must
    not undo the lift). An address bounced already stays so. A hard bounce makes it bounced;
    a soft one is counted with the others within the window before it, and the one that
    reaches the limit makes it bounced."""
    state = current or NEVER_BOUNCED
    at = min(occurred_at, now)
    before = _status(state)
    if state.lifted_at is not None and at <= state.lifted_at:
        return BounceDecision(BounceOutcome.SUPERSEDED, before, state, at, 0)
    if state.bounced:
        return BounceDecision(BounceOutcome.UNCHANGED, before, state, at, 0)
    if kind is BounceKind.HARD:
        bounced = BounceState(bounced=True, occurred_at=at, lifted_at=state.lifted_at, soft=())
        return BounceDecision(BounceOutcome.APPLIED, before, bounced, at, 0)
    start = at - policy.window
    counted = sorted(t for t in (*state.soft, at) if t > start)
    if len(counted) >= policy.limit:
        bounced = BounceState(bounced=True, occurred_at=at, lifted_at=state.lifted_at, soft=())
        return BounceDecision(BounceOutcome.APPLIED, before, bounced, at, len(counted))
    # Kept: the most recent, as many as can still count towards the limit.
    kept = tuple(counted[-(policy.limit - 1) :]) if policy.limit > 1 else ()
    first = state.occurred_at if current is not None else at
    counting = BounceState(bounced=False, occurred_at=first, lifted_at=state.lifted_at, soft=kept)
    return BounceDecision(BounceOutcome.UNCHANGED, before, counting, at, len(counted))


def decide_lift(current: BounceState | None, *, now: datetime) -> BounceDecision:
    """Lifting takes the address back to deliverable with nothing counted; lifting one that is
    not bounced changes nothing."""
    state = current or NEVER_BOUNCED
    if not state.bounced:
        return BounceDecision(BounceOutcome.UNCHANGED, BounceStatus.DELIVERABLE, state, now, 0)
    lifted = BounceState(bounced=False, occurred_at=now, lifted_at=now, soft=())
    return BounceDecision(BounceOutcome.APPLIED, BounceStatus.BOUNCED, lifted, now, 0)


def format_soft(times: tuple[datetime, ...]) -> str:
    return " ".join(t.astimezone(UTC).isoformat() for t in times)


def parse_soft(text: str) -> tuple[datetime, ...]:
    return tuple(datetime.fromisoformat(part) for part in text.split())
