"""Pure rules of the outbox: when a message that failed is tried again, and when never."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from prefcenter.outbox.schemas import AttemptOutcome, OutboxStatus

# After the n-th failed attempt a mail waits the n-th delay (± JITTER), and after the last it
# is given up: some three days in all, past the 7 days a confirmation link works less the time
# a person takes to read it. The first retries come soon, for a relay that restarts.
MAIL_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=8),
    timedelta(hours=12),
    timedelta(hours=24),
    timedelta(hours=24),
)
# A webhook delivery (Standard Webhooks' usual schedule, as the contract fixes it): retried
# 9 times over some three days; a receiver that answers `Retry-After` is not tried sooner.
WEBHOOK_RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
)
# Each delay is stretched or shrunk by up to this share, at random: messages that failed
# together (a relay that was down) do not all come back in the same second.
JITTER = 0.2


def retry_delay(
    schedule: tuple[timedelta, ...], failed_attempts: int, draw: float
) -> timedelta | None:
    """How long to wait after the `failed_attempts`-th failed attempt; None: give up.

    `draw` is a random number in [0, 1) (the caller's generator, so tests choose it): the delay
    is the schedule's, times a factor in [1 - JITTER, 1 + JITTER).
    """
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts from 1")
    if not 0.0 <= draw < 1.0:
        raise ValueError("draw must be in [0, 1)")
    if failed_attempts > len(schedule):
        return None
    return schedule[failed_attempts - 1] * (1.0 - JITTER + 2.0 * JITTER * draw)


@dataclass(frozen=True, slots=True)
class NextStep:
    status: OutboxStatus
    outcome: AttemptOutcome  # as the attempt is recorded: RETRY becomes FAILED at the end
    due_at: datetime | None  # for a retry


def after_attempt(
    outcome: AttemptOutcome,
    *,
    attempt_number: int,
    finished_at: datetime,
    schedule: tuple[timedelta, ...],
    draw: float,
) -> NextStep:
    """What a message becomes after its `attempt_number`-th attempt ended with `outcome`."""
    if outcome is AttemptOutcome.SENT:
        return NextStep(OutboxStatus.SENT, outcome, None)
    if outcome is AttemptOutcome.CANCELLED:
        return NextStep(OutboxStatus.CANCELLED, outcome, None)
    if outcome is AttemptOutcome.RETRY:
        delay = retry_delay(schedule, attempt_number, draw)
        if delay is not None:
            return NextStep(OutboxStatus.QUEUED, outcome, finished_at + delay)
    return NextStep(OutboxStatus.FAILED, AttemptOutcome.FAILED, None)
