"""Use cases that change consent: record one change, with its audit event, in one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from prefcenter.apikeys.schemas import Caller
from prefcenter.audit.context import RequestContext
from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.audit.service import append_event
from prefcenter.consent.errors import UnknownTopic
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import (
    ActorKind,
    CurrentState,
    Decision,
    Outcome,
    RequestedChange,
    Status,
    check_reversal_allowed,
    decide_change,
)
from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut
from prefcenter.contacts.service import lock_contact
from prefcenter.db import utcnow
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.topics.service import find_topic


def subscription_state(row: Subscription | None) -> CurrentState | None:
    if row is None:
        return None
    return CurrentState(Status(row.status), row.occurred_at, row.by_recipient)


def suppression_state(row: Suppression | None) -> CurrentState | None:
    """The contact-wide opt-out seen as a state: suppressed = unsubscribed from all marketing."""
    if row is None:
        return None
    status = Status.UNSUBSCRIBED if row.suppressed else Status.SUBSCRIBED
    return CurrentState(status, row.occurred_at, row.by_recipient)


def record_change(
    session: Session, change: ConsentChangeIn, *, caller: Caller, request: RequestContext
) -> ConsentChangeOut:
    """Record a consent change from an API client under the ordering rule and the guard.

    Everything that can fail or read is done before the audit append, which takes the
    serialising lock last.
    """
    now = utcnow()
    topic: Topic | None = None
    if change.topic is not None:
        topic = find_topic(session, change.topic)
        if topic is None:
            raise UnknownTopic(
                f"There is no topic {change.topic!r}; create it with PUT /v1/topics/{{key}}.",
                errors=[{"field": "topic", "detail": "unknown topic"}],
            )
    requested = RequestedChange(
        status=Status(change.status.value),
        occurred_at=change.occurred_at or now,
        actor=ActorKind.ADMIN if caller.is_admin else ActorKind.API_CLIENT,
        source=change.source,
        reason=change.reason,
        double_opt_in=topic.double_opt_in if topic is not None else False,
    )
    contact = lock_contact(session, change.email)
    assert contact.id is not None
    if topic is None:
        decision = _apply_global(session, contact.id, requested, now=now)
    else:
        decision = _apply_topic(session, contact.id, topic, requested, now=now)

    context: dict[str, Any] = {"actor_kind": requested.actor.value, **request.as_evidence()}
    if decision.clamped:
        context["claimed_occurred_at"] = requested.occurred_at.isoformat()
    event = append_event(
        session,
        NewEvent(
            kind=EventKind.CONSENT_CHANGE if topic else EventKind.GLOBAL_CONSENT_CHANGE,
            occurred_at=decision.occurred_at,
            actor=caller.actor,
            source=change.source,
            outcome=decision.outcome.value,
            contact_id=contact.public_id,
            topic=topic.key if topic else None,
            from_status=decision.from_status.value if decision.from_status else None,
            to_status=requested.status.value
            if decision.outcome is Outcome.SUPERSEDED
            else decision.status.value,
            campaign_id=change.campaign_id,
            reason=change.reason,
            evidence=change.evidence,
            context=context,
        ),
    )
    return ConsentChangeOut(
        contact_id=contact.public_id,
        email=change.email.given,
        topic=topic.key if topic else None,
        status=decision.status,
        changed=decision.changed,
        outcome=decision.outcome,
        event_id=event.id,
    )


def _apply_topic(
    session: Session, contact_id: int, topic: Topic, requested: RequestedChange, *, now: datetime
) -> Decision:
    if topic.kind == TopicKind.MARKETING and requested.status is Status.SUBSCRIBED:
        # A person who opted out of all marketing themselves is not re-enrolled topic by topic.
        check_reversal_allowed(
            suppression_state(_active_suppression(session, contact_id)), requested
        )
    assert topic.id is not None
    row = session.get(Subscription, (contact_id, topic.id))
    decision = decide_change(subscription_state(row), requested, now=now)
    if decision.outcome is Outcome.SUPERSEDED:
        return decision
    if row is None:
        row = Subscription(
            contact_id=contact_id,
            topic_id=topic.id,
            status="",
            occurred_at=now,
            since=now,
            source="",
        )
    if decision.outcome is Outcome.APPLIED:
        row.since = now
    row.status = decision.status.value
    row.occurred_at = decision.occurred_at
    row.source = requested.source
    row.by_recipient = decision.by_recipient
    session.add(row)
    session.flush()
    return decision


def _active_suppression(session: Session, contact_id: int) -> Suppression | None:
    row = session.get(Suppression, contact_id)
    return row if row is not None and row.suppressed else None


def _apply_global(
    session: Session, contact_id: int, requested: RequestedChange, *, now: datetime
) -> Decision:
    row = session.get(Suppression, contact_id)
    decision = decide_change(suppression_state(row), requested, now=now)
    if row is None and decision.status is Status.SUBSCRIBED:
        # Nothing was suppressed, so nothing changes for eligibility; the row still records
        # when the "not suppressed" state was asserted, so an older opt-out loses to it.
        decision = Decision(
            outcome=Outcome.UNCHANGED,
            from_status=None,
            status=Status.SUBSCRIBED,
            occurred_at=decision.occurred_at,
            by_recipient=decision.by_recipient,
            clamped=decision.clamped,
        )
    if decision.outcome is Outcome.SUPERSEDED:
        return decision
    suppressed = decision.status is Status.UNSUBSCRIBED
    if row is None:
        row = Suppression(
            contact_id=contact_id, suppressed=suppressed, occurred_at=now, since=now, source=""
        )
    if row.suppressed != suppressed or decision.outcome is Outcome.APPLIED:
        row.since = now
    row.suppressed = suppressed
    row.occurred_at = decision.occurred_at
    row.source = requested.source
    row.by_recipient = decision.by_recipient
    session.add(row)
    session.flush()
    return decision
