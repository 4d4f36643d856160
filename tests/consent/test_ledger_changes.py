"""consent.ledger.changes and .state: the write model's pure parts, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prefcenter.consent.errors import RecipientOptOutProtected
from prefcenter.consent.ledger.changes import (
    ChangeRecord,
    change_event,
    decide_global_change,
    decide_topic_change,
    subscription_change,
    suppression_change,
)
from prefcenter.consent.ledger.state import stored_subscription_state, stored_suppression_state
from prefcenter.consent.rules import ActorKind, CurrentState, Outcome, RequestedChange, Status
from prefcenter.topics.schemas import TopicKind

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def change(status: Status, *, at: datetime = NOW, source: str = "api") -> RequestedChange:
    return RequestedChange(status=status, occurred_at=at, actor=ActorKind.API_CLIENT, source=source)


def test_lifting_an_opt_out_that_never_was_changes_nothing() -> None:
    decision = decide_global_change(None, change(Status.SUBSCRIBED), now=NOW)

    assert decision.outcome is Outcome.UNCHANGED
    assert (
        suppression_change(decision, change(Status.SUBSCRIBED), now=NOW, was_suppressed=None)[
            "suppressed"
        ]
        is False
    )


def test_a_recipients_global_opt_out_guards_marketing_topics_only() -> None:
    opted_out = CurrentState(Status.UNSUBSCRIBED, NOW - timedelta(hours=1), by_recipient=True)

    with pytest.raises(RecipientOptOutProtected):
        decide_topic_change(
            None,
            opted_out,
            topic_kind=TopicKind.MARKETING,
            requested=change(Status.SUBSCRIBED),
            now=NOW,
        )
    transactional = decide_topic_change(
        None,
        opted_out,
        topic_kind=TopicKind.TRANSACTIONAL,
        requested=change(Status.SUBSCRIBED),
        now=NOW,
    )
    assert transactional.outcome is Outcome.APPLIED


def test_driver_tuples_read_as_orm_rows_do() -> None:
    assert stored_subscription_state(None, None, None) is None
    assert stored_subscription_state("pending", NOW, by_recipient=False) == CurrentState(
        Status.PENDING, NOW, by_recipient=False
    )
    assert stored_suppression_state(
        suppressed=True, occurred_at=NOW, by_recipient=True
    ) == CurrentState(Status.UNSUBSCRIBED, NOW, by_recipient=True)
    assert stored_suppression_state(
        suppressed=False, occurred_at=NOW, by_recipient=False
    ) == CurrentState(Status.SUBSCRIBED, NOW, by_recipient=False)


def test_a_clamped_change_keeps_its_claimed_time_in_the_event() -> None:
    future = NOW + timedelta(days=1)
    requested = change(Status.UNSUBSCRIBED, at=future)
    decision = decide_topic_change(
        None, None, topic_kind=TopicKind.MARKETING, requested=requested, now=NOW
    )

    event = change_event(
        event_id="e1",
        contact_id="c1",
        address="ada@example.com",
        topic_key="newsletter",
        requested=requested,
        record=ChangeRecord(actor="api:k", source="api"),
        decision=decision,
    )

    assert event.occurred_at == NOW
    assert event.context["claimed_occurred_at"] == future.isoformat()
    values = subscription_change(decision, requested, now=NOW, event_id="e1")
    assert values["occurred_at"] == NOW
    assert values["event_id"] == "e1"
