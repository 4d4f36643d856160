"""Owns writing one decided change through the session: the locking path that every writer
but the unsubscribe lane and batches takes (`apply_change`); and an erasure's end of the
contact's consent state (`erase_consent_state`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import and_, bindparam, delete, select
from sqlmodel import Session, col

from prefcenter.audit.schemas import new_event_id
from prefcenter.audit.service import append_event
from prefcenter.consent.ledger.changes import (
    ChangeRecord,
    change_event,
    counted_source,
    decide_global_change,
    decide_topic_change,
    given_under,
    needs_suppression,
    subscription_change,
    suppression_change,
)
from prefcenter.consent.ledger.notices import bound_notice
from prefcenter.consent.ledger.state import subscription_state, suppression_state
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Decision, Outcome, RequestedChange
from prefcenter.contacts.models import Contact
from prefcenter.metrics import count_consent_change
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.webhooks.queue import queue_change_deliveries


@dataclass(frozen=True, slots=True)
class AppliedChange:
    decision: Decision
    event_id: str
    # The subscription after the change (None for a contact-wide change).
    subscription: Subscription | None


def apply_change(
    session: Session,
    *,
    contact: Contact,
    topic: Topic | None,
    requested: RequestedChange,
    record: ChangeRecord,
    now: datetime,
) -> AppliedChange:
    """Decide, write the new state and append the audit event, in that order.

    The contact must be locked by the caller (contacts.service). The audit append takes the
    lock that serialises all writers, so it comes last, after every read and check. Whether
    the change comes with proof is read from the record, whatever the caller said.
    """
    assert contact.id is not None
    requested = replace(requested, with_evidence=bool(record.evidence))
    event_id = new_event_id()  # known first: the state it sets points at it
    subscription: Subscription | None = None
    if topic is None:
        decision = _write_global(session, contact.id, requested, now=now)
    else:
        decision, subscription, record = _write_topic(
            session, contact.id, topic, requested, record, event_id=event_id, now=now
        )
    event = change_event(
        event_id=event_id,
        contact_id=contact.public_id,
        address=contact.address,
        topic_key=topic.key if topic else None,
        requested=requested,
        record=record,
        decision=decision,
    )
    append_event(session, event)
    # Counted at commit.
    count_consent_change(
        session,
        source=counted_source(requested),
        outcome=decision.outcome.value,
    )
    # Its webhook deliveries, in the same transaction (none when no endpoint wants them).
    queue_change_deliveries(
        session,
        event_id=event.id,
        kind=event.kind.value,
        outcome=event.outcome,
        to_status=event.to_status,
        contact_id=event.contact_id,
        now=now,
    )
    return AppliedChange(decision=decision, event_id=event_id, subscription=subscription)


# A contact's suppression and its subscription of one topic (None where there is none).
_STATE_OF_CONTACT = (
    select(Suppression, Subscription)
    .select_from(Contact)
    .outerjoin(Suppression, col(Suppression.contact_id) == col(Contact.id))
    .outerjoin(
        Subscription,
        and_(
            col(Subscription.contact_id) == col(Contact.id),
            col(Subscription.topic_id) == bindparam("topic_id"),
        ),
    )
    .where(col(Contact.id) == bindparam("contact_id"))
)


def _write_topic(
    session: Session,
    contact_id: int,
    topic: Topic,
    requested: RequestedChange,
    record: ChangeRecord,
    *,
    event_id: str,
    now: datetime,
) -> tuple[Decision, Subscription | None, ChangeRecord]:
    assert topic.id is not None
    suppression = None
    if needs_suppression(topic.kind, requested):
        # Both rows in one round trip; read after the contact's lock, so current.
        stored, row = session.execute(
            _STATE_OF_CONTACT, {"contact_id": contact_id, "topic_id": topic.id}
        ).one()
        suppression = suppression_state(stored)
    else:
        row = session.get(Subscription, (contact_id, topic.id))
    decision = decide_topic_change(
        subscription_state(row),
        suppression,
        topic_kind=TopicKind(topic.kind),
        requested=requested,
        now=now,
    )
    if decision.outcome is Outcome.SUPERSEDED:
        return decision, row, record
    # The notice version it is given under (re-consent): a query only for a bound topic.
    given = given_under(
        decision,
        requested,
        record,
        bound=bound_notice(session, topic.notice_key),
        stored=None if row is None else row.notice_version_id,
    )
    decision, record = given.decision, given.record
    if row is None:
        row = Subscription(
            contact_id=contact_id,
            topic_id=topic.id,
            status="",
            occurred_at=now,
            since=now,
            source="",
            event_id=event_id,
        )
    values = subscription_change(decision, requested, now=now, event_id=event_id)
    for name, value in {**values, **given.values}.items():
        setattr(row, name, value)
    session.add(row)
    session.flush()
    return decision, row, record


def _write_global(
    session: Session, contact_id: int, requested: RequestedChange, *, now: datetime
) -> Decision:
    row = session.get(Suppression, contact_id)
    decision = decide_global_change(suppression_state(row), requested, now=now)
    if decision.outcome is Outcome.SUPERSEDED:
        return decision
    values = suppression_change(
        decision, requested, now=now, was_suppressed=None if row is None else row.suppressed
    )
    if row is None:
        row = Suppression(contact_id=contact_id, **values)
    for name, value in values.items():
        setattr(row, name, value)
    session.add(row)
    session.flush()
    return decision


def erase_consent_state(session: Session, contact_id: int, *, source: str, now: datetime) -> None:
    """An erased contact's consent state: no subscriptions, suppressed for good (as if the
    person had opted out of everything themselves, now)."""
    session.execute(delete(Subscription).where(col(Subscription.contact_id) == contact_id))
    suppression = session.get(Suppression, contact_id) or Suppression(
        contact_id=contact_id, suppressed=True, occurred_at=now, since=now, source=""
    )
    if not suppression.suppressed:
        suppression.since = now
    suppression.suppressed = True
    suppression.occurred_at = now
    suppression.source = source
    suppression.by_recipient = True
    session.add(suppression)
