"""The consent rules, without a database: ordering, ties, clamping, the sync-loop guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from prefcenter.consent.errors import EvidenceRequired, ReasonRequired, RecipientOptOutProtected
from prefcenter.consent.rules import (
    RECIPIENT_SOURCES,
    ActorKind,
    CurrentState,
    Decision,
    Outcome,
    RequestedChange,
    Status,
    clamp_occurred_at,
    decide_change,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
LATER_THAN_EARLIER = NOW - timedelta(minutes=30)


def change(
    status: Status,
    at: datetime = NOW,
    *,
    actor: ActorKind = ActorKind.API_CLIENT,
    source: str = "api",
    reason: str | None = None,
    double_opt_in: bool = False,
    with_evidence: bool = False,
) -> RequestedChange:
    return RequestedChange(
        status=status,
        occurred_at=at,
        actor=actor,
        source=source,
        reason=reason,
        double_opt_in=double_opt_in,
        with_evidence=with_evidence,
    )


def state(status: Status, at: datetime = EARLIER, *, by_recipient: bool = False) -> CurrentState:
    return CurrentState(status=status, occurred_at=at, by_recipient=by_recipient)


class TestOrdering:
    def test_first_change_is_applied(self) -> None:
        decision = decide_change(None, change(Status.SUBSCRIBED), now=NOW)
        assert decision.outcome is Outcome.APPLIED
        assert decision.from_status is None
        assert decision.status is Status.SUBSCRIBED

    def test_newer_change_is_applied(self) -> None:
        decision = decide_change(
            state(Status.SUBSCRIBED), change(Status.UNSUBSCRIBED, LATER_THAN_EARLIER), now=NOW
        )
        assert decision.outcome is Outcome.APPLIED
        assert decision.from_status is Status.SUBSCRIBED
        assert decision.status is Status.UNSUBSCRIBED

    def test_older_change_is_superseded_and_changes_nothing(self) -> None:
        current = state(Status.UNSUBSCRIBED, LATER_THAN_EARLIER)
        decision = decide_change(current, change(Status.SUBSCRIBED, EARLIER), now=NOW)
        assert decision.outcome is Outcome.SUPERSEDED
        assert decision.status is Status.UNSUBSCRIBED
        assert not decision.changed

    def test_older_opt_out_is_superseded_too(self) -> None:
        current = state(Status.SUBSCRIBED, LATER_THAN_EARLIER)
        decision = decide_change(current, change(Status.UNSUBSCRIBED, EARLIER), now=NOW)
        assert decision.outcome is Outcome.SUPERSEDED
        assert decision.status is Status.SUBSCRIBED

    def test_tie_goes_to_the_opt_out_when_opt_out_is_current(self) -> None:
        current = state(Status.UNSUBSCRIBED, EARLIER)
        decision = decide_change(current, change(Status.SUBSCRIBED, EARLIER), now=NOW)
        assert decision.outcome is Outcome.SUPERSEDED
        assert decision.status is Status.UNSUBSCRIBED

    def test_tie_goes_to_the_opt_out_when_opt_out_arrives(self) -> None:
        current = state(Status.SUBSCRIBED, EARLIER)
        decision = decide_change(current, change(Status.UNSUBSCRIBED, EARLIER), now=NOW)
        assert decision.outcome is Outcome.APPLIED
        assert decision.status is Status.UNSUBSCRIBED

    def test_same_status_again_is_unchanged(self) -> None:
        decision = decide_change(state(Status.SUBSCRIBED), change(Status.SUBSCRIBED), now=NOW)
        assert decision.outcome is Outcome.UNCHANGED
        assert decision.occurred_at == NOW


class TestClamping:
    def test_future_time_is_clamped_to_now(self) -> None:
        future = NOW + timedelta(days=3)
        assert clamp_occurred_at(future, NOW) == NOW
        decision = decide_change(None, change(Status.UNSUBSCRIBED, future), now=NOW)
        assert decision.occurred_at == NOW
        assert decision.clamped

    def test_past_time_is_kept(self) -> None:
        decision = decide_change(None, change(Status.UNSUBSCRIBED, EARLIER), now=NOW)
        assert decision.occurred_at == EARLIER
        assert not decision.clamped

    def test_future_change_cannot_outrank_a_later_real_one(self) -> None:
        clamped = decide_change(None, change(Status.SUBSCRIBED, NOW + timedelta(days=365)), now=NOW)
        later_now = NOW + timedelta(seconds=1)
        current = state(clamped.status, clamped.occurred_at)
        decision = decide_change(current, change(Status.UNSUBSCRIBED, later_now), now=later_now)
        assert decision.outcome is Outcome.APPLIED


class TestRecipientOptOutGuard:
    def recipient_opt_out(self) -> CurrentState:
        return state(Status.UNSUBSCRIBED, EARLIER, by_recipient=True)

    def test_api_client_cannot_resubscribe(self) -> None:
        with pytest.raises(RecipientOptOutProtected):
            decide_change(self.recipient_opt_out(), change(Status.SUBSCRIBED), now=NOW)

    def test_admin_without_reason_is_refused(self) -> None:
        with pytest.raises(ReasonRequired):
            decide_change(
                self.recipient_opt_out(),
                change(Status.SUBSCRIBED, actor=ActorKind.ADMIN, reason="  "),
                now=NOW,
            )

    def test_admin_with_reason_may_resubscribe(self) -> None:
        decision = decide_change(
            self.recipient_opt_out(),
            change(
                Status.SUBSCRIBED,
                actor=ActorKind.ADMIN,
                reason="ticket 123: asked by phone",
                with_evidence=True,
            ),
            now=NOW,
        )
        assert decision.outcome is Outcome.APPLIED
        assert decision.status is Status.SUBSCRIBED

    def test_recipient_may_resubscribe(self) -> None:
        decision = decide_change(
            self.recipient_opt_out(),
            change(Status.SUBSCRIBED, actor=ActorKind.RECIPIENT, source="preference_center"),
            now=NOW,
        )
        assert decision.status is Status.SUBSCRIBED

    def test_api_client_may_reverse_its_own_opt_out(self) -> None:
        current = state(Status.UNSUBSCRIBED, EARLIER, by_recipient=False)
        decision = decide_change(current, change(Status.SUBSCRIBED), now=NOW)
        assert decision.outcome is Outcome.APPLIED

    @pytest.mark.parametrize("source", sorted(RECIPIENT_SOURCES))
    def test_opt_out_with_a_recipient_source_is_the_recipients(self, source: str) -> None:
        decision = decide_change(None, change(Status.UNSUBSCRIBED, source=source), now=NOW)
        assert decision.by_recipient
        with pytest.raises(RecipientOptOutProtected):
            decide_change(
                state(decision.status, decision.occurred_at, by_recipient=decision.by_recipient),
                change(Status.SUBSCRIBED, NOW + timedelta(seconds=1)),
                now=NOW + timedelta(seconds=1),
            )

    def test_recipient_repeating_a_tools_opt_out_makes_it_theirs(self) -> None:
        current = state(Status.UNSUBSCRIBED, EARLIER, by_recipient=False)
        decision = decide_change(
            current, change(Status.UNSUBSCRIBED, actor=ActorKind.RECIPIENT), now=NOW
        )
        assert decision.outcome is Outcome.UNCHANGED
        assert decision.by_recipient

    def test_superseded_resubscribe_is_not_a_conflict(self) -> None:
        current = state(Status.UNSUBSCRIBED, LATER_THAN_EARLIER, by_recipient=True)
        decision = decide_change(current, change(Status.SUBSCRIBED, EARLIER), now=NOW)
        assert decision.outcome is Outcome.SUPERSEDED


def confirmed() -> RequestedChange:
    return RequestedChange(
        status=Status.SUBSCRIBED,
        occurred_at=NOW,
        actor=ActorKind.RECIPIENT,
        source="confirmation",
        double_opt_in=True,
        confirmed=True,
    )


class TestDoubleOptIn:
    def test_api_subscribe_is_pending(self) -> None:
        decision = decide_change(None, change(Status.SUBSCRIBED, double_opt_in=True), now=NOW)
        assert decision.status is Status.PENDING

    def test_recipient_confirmation_subscribes(self) -> None:
        pending = state(Status.PENDING)
        decision = decide_change(
            pending,
            confirmed(),
            now=NOW,
        )
        assert decision.status is Status.SUBSCRIBED
        assert decision.outcome is Outcome.APPLIED

    def test_recipient_ticking_a_box_is_not_a_confirmation(self) -> None:
        decision = decide_change(
            None,
            change(Status.SUBSCRIBED, actor=ActorKind.RECIPIENT, double_opt_in=True),
            now=NOW,
        )
        assert decision.status is Status.PENDING

    def test_asking_again_when_confirmed_changes_nothing(self) -> None:
        decision = decide_change(
            state(Status.SUBSCRIBED), change(Status.SUBSCRIBED, double_opt_in=True), now=NOW
        )
        assert decision.outcome is Outcome.UNCHANGED
        assert decision.status is Status.SUBSCRIBED

    def test_unsubscribe_while_pending_applies(self) -> None:
        decision = decide_change(
            state(Status.PENDING), change(Status.UNSUBSCRIBED, double_opt_in=True), now=NOW
        )
        assert decision.status is Status.UNSUBSCRIBED


# --- properties --------------------------------------------------------------------------

times = st.integers(min_value=0, max_value=20).map(lambda m: EARLIER + timedelta(minutes=m))
statuses = st.sampled_from([Status.SUBSCRIBED, Status.UNSUBSCRIBED])
actors = st.sampled_from(list(ActorKind))
sources = st.sampled_from(["api", "import", "one_click", "support", "preference_center"])
requested = st.builds(
    change,
    statuses,
    times,
    actor=actors,
    source=sources,
    reason=st.one_of(st.none(), st.just("ticket 7")),
)


def apply_all(changes: list[RequestedChange]) -> CurrentState | None:
    """Fold changes through decide_change, skipping the ones the guard refuses."""
    current: CurrentState | None = None
    for item in changes:
        try:
            decision = decide_change(current, item, now=NOW)
        except (RecipientOptOutProtected, ReasonRequired, EvidenceRequired):
            continue
        if decision.outcome is not Outcome.SUPERSEDED:
            current = CurrentState(decision.status, decision.occurred_at, decision.by_recipient)
    return current


@given(st.lists(requested, min_size=1, max_size=12))
def test_state_never_goes_back_in_time(changes: list[RequestedChange]) -> None:
    current: CurrentState | None = None
    for item in changes:
        try:
            decision = decide_change(current, item, now=NOW)
        except (RecipientOptOutProtected, ReasonRequired, EvidenceRequired):
            continue
        new = CurrentState(decision.status, decision.occurred_at, decision.by_recipient)
        if current is not None and decision.outcome is not Outcome.SUPERSEDED:
            assert new.occurred_at >= current.occurred_at
        if decision.outcome is not Outcome.SUPERSEDED:
            current = new


@given(st.lists(requested, min_size=1, max_size=12))
def test_final_state_is_the_latest_change_with_ties_to_the_opt_out(
    changes: list[RequestedChange],
) -> None:
    """Without guard refusals, arrival order does not matter: the latest change wins and a tie
    goes to the opt-out."""
    unguarded = [
        RequestedChange(c.status, c.occurred_at, ActorKind.RECIPIENT, "one_click") for c in changes
    ]
    final = apply_all(unguarded)
    latest = max(c.occurred_at for c in unguarded)
    at_latest = {c.status for c in unguarded if c.occurred_at == latest}
    expected = Status.UNSUBSCRIBED if Status.UNSUBSCRIBED in at_latest else Status.SUBSCRIBED
    assert final is not None
    assert final.status is expected
    assert final.occurred_at == latest
    assert apply_all(list(reversed(unguarded))) == final


@given(st.lists(requested, min_size=1, max_size=12), requested)
def test_api_client_never_reverses_a_recipient_opt_out(
    history: list[RequestedChange], attempt: RequestedChange
) -> None:
    current = apply_all(history)
    plain = RequestedChange(Status.SUBSCRIBED, attempt.occurred_at, ActorKind.API_CLIENT, "api")
    assume(current is not None and current.status is Status.UNSUBSCRIBED)
    assert current is not None
    assume(current.by_recipient)
    try:
        decision = decide_change(current, plain, now=NOW)
    except RecipientOptOutProtected:
        return
    assert decision.outcome is Outcome.SUPERSEDED
    assert decision.status is Status.UNSUBSCRIBED


@given(requested, st.integers(min_value=-5, max_value=5))
def test_occurred_at_is_never_in_the_future(item: RequestedChange, skew_days: int) -> None:
    # With a reason: a support-desk change without one is refused (check_support_reason).
    shifted = RequestedChange(
        item.status, NOW + timedelta(days=skew_days), item.actor, item.source, "ticket 7"
    )
    decision: Decision = decide_change(None, shifted, now=NOW)
    assert decision.occurred_at <= NOW
    assert decision.clamped == (skew_days > 0)
