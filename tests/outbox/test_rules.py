"""The retry rule of the outbox, without a database: the schedule, its jitter, the end."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefcenter.outbox.rules import (
    JITTER,
    MAIL_RETRY_SCHEDULE,
    after_attempt,
    retry_delay,
)
from prefcenter.outbox.schemas import AttemptOutcome, OutboxStatus

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SCHEDULE = (timedelta(seconds=10), timedelta(minutes=1), timedelta(hours=1))


class TestRetryDelay:
    def test_a_draw_in_the_middle_gives_the_schedule_itself(self) -> None:
        assert retry_delay(SCHEDULE, 1, 0.5) == timedelta(seconds=10)
        assert retry_delay(SCHEDULE, 3, 0.5) == timedelta(hours=1)

    def test_the_extremes_of_the_draw_stretch_by_the_jitter(self) -> None:
        assert retry_delay(SCHEDULE, 2, 0.0) == timedelta(minutes=1) * (1 - JITTER)
        high = retry_delay(SCHEDULE, 2, 0.999999)
        assert high is not None
        assert timedelta(minutes=1) < high < timedelta(minutes=1) * (1 + JITTER)

    def test_after_the_last_delay_it_gives_up(self) -> None:
        assert retry_delay(SCHEDULE, len(SCHEDULE) + 1, 0.5) is None

    @pytest.mark.parametrize(("failed", "draw"), [(0, 0.5), (-1, 0.5), (1, 1.0), (1, -0.1)])
    def test_nonsense_is_refused(self, failed: int, draw: float) -> None:
        with pytest.raises(ValueError, match=r"counts from 1|draw"):
            retry_delay(SCHEDULE, failed, draw)

    @given(
        failed=st.integers(min_value=1, max_value=len(MAIL_RETRY_SCHEDULE)),
        draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    )
    def test_every_delay_stays_within_its_jitter(self, failed: int, draw: float) -> None:
        base = MAIL_RETRY_SCHEDULE[failed - 1]
        delay = retry_delay(MAIL_RETRY_SCHEDULE, failed, draw)
        assert delay is not None
        assert base * (1 - JITTER) <= delay <= base * (1 + JITTER)

    def test_a_later_wait_is_never_shorter_than_an_earlier_one(self) -> None:
        # With the worst draws on both sides: the schedule grows by more than the jitter spans.
        for earlier, later in itertools.pairwise(MAIL_RETRY_SCHEDULE):
            assert later * (1 - JITTER) >= earlier * (1 + JITTER) or later == earlier

    def test_mail_is_given_up_after_some_days_not_hours_nor_weeks(self) -> None:
        total = sum(MAIL_RETRY_SCHEDULE, timedelta())
        assert timedelta(days=2) < total < timedelta(days=7)


class TestAfterAttempt:
    def test_sent_is_final(self) -> None:
        step = after_attempt(
            AttemptOutcome.SENT, attempt_number=1, finished_at=NOW, schedule=SCHEDULE, draw=0.5
        )
        assert (step.status, step.outcome, step.due_at) == (
            OutboxStatus.SENT,
            AttemptOutcome.SENT,
            None,
        )

    def test_a_temporary_error_comes_back_after_its_delay(self) -> None:
        step = after_attempt(
            AttemptOutcome.RETRY, attempt_number=2, finished_at=NOW, schedule=SCHEDULE, draw=0.5
        )
        assert step.status is OutboxStatus.QUEUED
        assert step.outcome is AttemptOutcome.RETRY
        assert step.due_at == NOW + timedelta(minutes=1)

    def test_the_last_temporary_error_fails_the_message(self) -> None:
        step = after_attempt(
            AttemptOutcome.RETRY,
            attempt_number=len(SCHEDULE) + 1,
            finished_at=NOW,
            schedule=SCHEDULE,
            draw=0.5,
        )
        assert (step.status, step.outcome, step.due_at) == (
            OutboxStatus.FAILED,
            AttemptOutcome.FAILED,
            None,
        )

    def test_a_permanent_error_fails_at_once(self) -> None:
        step = after_attempt(
            AttemptOutcome.FAILED, attempt_number=1, finished_at=NOW, schedule=SCHEDULE, draw=0.5
        )
        assert step.status is OutboxStatus.FAILED

    def test_a_cancelled_message_is_dropped(self) -> None:
        step = after_attempt(
            AttemptOutcome.CANCELLED, attempt_number=1, finished_at=NOW, schedule=SCHEDULE, draw=0
        )
        assert step.status is OutboxStatus.CANCELLED
