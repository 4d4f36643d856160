"""The rules of bounces, without a database: hard and soft bounces, the window, lifts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from prefcenter.bounces.rules import (
    BounceKind,
    BounceOutcome,
    BounceStatus,
    SoftBouncePolicy,
    decide_bounce,
    decide_lift,
    format_soft,
    parse_soft,
)

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
POLICY = SoftBouncePolicy(limit=3, window=timedelta(days=7))


def test_a_hard_bounce_bounces() -> None:
    decision = decide_bounce(
        None, BounceKind.HARD, NOW - timedelta(hours=1), policy=POLICY, now=NOW
    )
    assert decision.outcome is BounceOutcome.APPLIED
    assert (decision.from_status, decision.status) == (
        BounceStatus.DELIVERABLE,
        BounceStatus.BOUNCED,
    )
    assert decision.became_bounced


def test_a_bounce_from_the_future_counts_as_now() -> None:
    decision = decide_bounce(None, BounceKind.HARD, NOW + timedelta(days=9), policy=POLICY, now=NOW)
    assert decision.occurred_at == NOW


def test_bounced_stays_bounced() -> None:
    first = decide_bounce(None, BounceKind.HARD, NOW, policy=POLICY, now=NOW)
    again = decide_bounce(first.state, BounceKind.SOFT, NOW, policy=POLICY, now=NOW)
    assert again.outcome is BounceOutcome.UNCHANGED
    assert again.state == first.state


def test_soft_bounces_within_the_window_reach_the_limit() -> None:
    state = None
    outcomes = []
    for days in (0, 2, 4):
        decision = decide_bounce(
            state, BounceKind.SOFT, NOW - timedelta(days=6 - days), policy=POLICY, now=NOW
        )
        state = decision.state
        outcomes.append((decision.outcome, decision.soft_count))
    assert outcomes == [
        (BounceOutcome.UNCHANGED, 1),
        (BounceOutcome.UNCHANGED, 2),
        (BounceOutcome.APPLIED, 3),
    ]
    assert state is not None
    assert state.bounced
    assert state.soft == ()


def test_soft_bounces_further_apart_than_the_window_never_bounce() -> None:
    state = None
    for week in range(10):
        decision = decide_bounce(
            state, BounceKind.SOFT, NOW - timedelta(days=8 * (10 - week)), policy=POLICY, now=NOW
        )
        state = decision.state
        assert decision.outcome is BounceOutcome.UNCHANGED
    assert state is not None
    assert not state.bounced


def test_a_lift_forgets_the_count_and_outranks_older_bounces() -> None:
    bounced = decide_bounce(None, BounceKind.HARD, NOW - timedelta(days=1), policy=POLICY, now=NOW)
    lift = decide_lift(bounced.state, now=NOW)
    assert lift.outcome is BounceOutcome.APPLIED
    assert lift.status is BounceStatus.DELIVERABLE
    late = decide_bounce(
        lift.state, BounceKind.HARD, NOW - timedelta(hours=1), policy=POLICY, now=NOW
    )
    assert late.outcome is BounceOutcome.SUPERSEDED
    assert late.state == lift.state
    later = NOW + timedelta(minutes=1)
    fresh = decide_bounce(lift.state, BounceKind.HARD, later, policy=POLICY, now=later)
    assert fresh.became_bounced


def test_lifting_what_is_not_bounced_changes_nothing() -> None:
    assert decide_lift(None, now=NOW).outcome is BounceOutcome.UNCHANGED


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(BounceKind)), st.integers(min_value=0, max_value=60 * 24 * 30)
        ),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=5),
)
def test_the_count_kept_is_never_at_the_limit(
    reports: list[tuple[BounceKind, int]], limit: int
) -> None:
    policy = SoftBouncePolicy(limit=limit, window=timedelta(days=7))
    state = None
    for kind, minutes in reports:
        decision = decide_bounce(
            state, kind, NOW - timedelta(minutes=minutes), policy=policy, now=NOW
        )
        state = decision.state
        assert len(state.soft) < limit
        assert parse_soft(format_soft(state.soft)) == state.soft
        if kind is BounceKind.HARD:
            assert state.bounced
