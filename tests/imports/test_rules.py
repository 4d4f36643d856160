"""What one imported row may do, without a database: never reverse an opt-out or touch an
erased person; otherwise the consent ordering rule, as the API applies it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prefcenter.consent.rules import CurrentState, Status
from prefcenter.imports.rules import (
    NEW_CONTACT,
    ContactState,
    RowOutcome,
    decide_row,
    state_after,
)
from prefcenter.topics.schemas import TopicKind

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EARLIER = NOW - timedelta(days=30)
LATER = NOW - timedelta(days=1)
MARKETING = TopicKind.MARKETING


def state(
    subscription: Status | None = None,
    *,
    suppressed: bool | None = None,
    at: datetime = EARLIER,
    by_recipient: bool = False,
    erased: bool = False,
) -> ContactState:
    return ContactState(
        erased=erased,
        subscription=CurrentState(subscription, at, by_recipient) if subscription else None,
        suppression=None
        if suppressed is None
        else CurrentState(
            Status.UNSUBSCRIBED if suppressed else Status.SUBSCRIBED, at, by_recipient
        ),
    )


def outcome(
    current: ContactState, status: Status, at: datetime = LATER, **kw: object
) -> RowOutcome:
    kind = kw.get("topic_kind", MARKETING)
    assert isinstance(kind, TopicKind)
    return decide_row(current, status, at, topic_kind=kind, now=NOW).outcome


class TestNeverReverses:
    @pytest.mark.parametrize("by_recipient", [True, False])
    @pytest.mark.parametrize("at", [EARLIER - timedelta(days=1), LATER])
    def test_a_topic_opt_out_by_anyone_at_any_time(self, by_recipient: bool, at: datetime) -> None:
        current = state(Status.UNSUBSCRIBED, by_recipient=by_recipient)

        assert outcome(current, Status.SUBSCRIBED, at) is RowOutcome.REFUSED_REVERSAL

    def test_a_contact_wide_opt_out_on_a_marketing_topic(self) -> None:
        assert outcome(state(suppressed=True), Status.SUBSCRIBED) is RowOutcome.REFUSED_REVERSAL

    def test_a_contact_wide_opt_out_does_not_block_transactional_topics(self) -> None:
        current = state(suppressed=True)

        assert (
            outcome(current, Status.SUBSCRIBED, topic_kind=TopicKind.TRANSACTIONAL)
            is RowOutcome.SUBSCRIBED
        )

    def test_a_lifted_contact_wide_opt_out_blocks_nothing(self) -> None:
        assert outcome(state(suppressed=False), Status.SUBSCRIBED) is RowOutcome.SUBSCRIBED

    @pytest.mark.parametrize("status", [Status.SUBSCRIBED, Status.UNSUBSCRIBED])
    def test_an_erased_person_is_never_touched(self, status: Status) -> None:
        assert outcome(state(erased=True), status) is RowOutcome.REFUSED_ERASED


class TestOrdering:
    def test_new_contacts_take_the_row(self) -> None:
        assert outcome(NEW_CONTACT, Status.SUBSCRIBED) is RowOutcome.SUBSCRIBED
        assert outcome(NEW_CONTACT, Status.UNSUBSCRIBED) is RowOutcome.UNSUBSCRIBED

    def test_the_same_state_is_unchanged(self) -> None:
        assert outcome(state(Status.SUBSCRIBED), Status.SUBSCRIBED) is RowOutcome.UNCHANGED

    def test_an_older_opt_out_is_superseded(self) -> None:
        current = state(Status.SUBSCRIBED, at=LATER)

        assert outcome(current, Status.UNSUBSCRIBED, EARLIER) is RowOutcome.SUPERSEDED

    def test_a_newer_opt_out_applies(self) -> None:
        assert outcome(state(Status.SUBSCRIBED), Status.UNSUBSCRIBED) is RowOutcome.UNSUBSCRIBED

    def test_a_pending_subscription_is_completed(self) -> None:
        assert outcome(state(Status.PENDING), Status.SUBSCRIBED) is RowOutcome.SUBSCRIBED

    def test_a_time_in_the_future_counts_as_now(self) -> None:
        decided = decide_row(
            NEW_CONTACT, Status.SUBSCRIBED, NOW + timedelta(days=1), topic_kind=MARKETING, now=NOW
        )

        assert decided.decision is not None
        assert decided.decision.occurred_at == NOW
        assert decided.decision.clamped


class TestStateAfter:
    def test_an_imported_opt_out_is_guarded_like_the_persons_own(self) -> None:
        decided = decide_row(NEW_CONTACT, Status.UNSUBSCRIBED, LATER, topic_kind=MARKETING, now=NOW)

        after = state_after(NEW_CONTACT, decided)

        assert after.subscription == CurrentState(Status.UNSUBSCRIBED, LATER, by_recipient=True)

    def test_a_later_row_of_the_same_file_cannot_undo_it(self) -> None:
        first = decide_row(NEW_CONTACT, Status.UNSUBSCRIBED, EARLIER, topic_kind=MARKETING, now=NOW)
        after = state_after(NEW_CONTACT, first)

        assert outcome(after, Status.SUBSCRIBED, LATER) is RowOutcome.REFUSED_REVERSAL

    def test_rows_not_applied_leave_the_state(self) -> None:
        current = state(Status.SUBSCRIBED)
        decided = decide_row(current, Status.SUBSCRIBED, LATER, topic_kind=MARKETING, now=NOW)

        assert state_after(current, decided) is current
