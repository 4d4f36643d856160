"""Use cases that change consent: one change, under the ordering rule and the guard, with its
audit event, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlmodel import Session

from prefcenter.apikeys.schemas import Caller
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import EventKind, NewEvent, new_event_id
from prefcenter.audit.service import append_event
from prefcenter.consent.confirmation_mail import CONFIRM_BY_MAIL, queue_confirmation
from prefcenter.consent.contact_creation import lock_new_contact
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
from prefcenter.contacts.models import Contact
from prefcenter.db import utcnow
from prefcenter.mail.config import mail_config
from prefcenter.notices.service import check_consent_notice
from prefcenter.settings import Settings, SigningKey
from prefcenter.tokens import TokenClaims, TokenPurpose, confirm_url, sign_token
from prefcenter.topics.errors import UnknownTopic
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.topics.service import find_topic
from prefcenter.webhooks.queue import queue_change_deliveries


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """Who asks for a change and what they show for it, as it goes into the audit event."""

    actor: str
    source: str
    campaign_id: str | None = None
    reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    # Who is handed the confirmation link if the change leaves a subscription pending (an API
    # client while the service sends no mail itself, else `mail`): the trail then says who
    # could confirm.
    confirm_link_to: str | None = None


@dataclass(frozen=True, slots=True)
class AppliedChange:
    decision: Decision
    event_id: str
    # The subscription after the change (None for a contact-wide change).
    subscription: Subscription | None


def subscription_state(row: Subscription | None) -> CurrentState | None:
    if row is None:
        return None
    return CurrentState(Status(row.status), row.occurred_at, row.by_recipient)


def suppression_state(row: Suppression | None) -> CurrentState | None:
    if row is None:
        return None
    return suppressed_state(row.suppressed, row.occurred_at, row.by_recipient)


def suppressed_state(suppressed: bool, occurred_at: datetime, by_recipient: bool) -> CurrentState:
    """The contact-wide opt-out seen as a state: suppressed = unsubscribed from all marketing."""
    status = Status.UNSUBSCRIBED if suppressed else Status.SUBSCRIBED
    return CurrentState(status, occurred_at, by_recipient)


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
        decision = _apply_global(session, contact.id, requested, now=now)
    else:
        decision, subscription = _apply_topic(
            session, contact.id, topic, requested, event_id=event_id, now=now
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


def change_event(
    *,
    event_id: str,
    contact_id: str,
    address: str | None,
    topic_key: str | None,
    requested: RequestedChange,
    record: ChangeRecord,
    decision: Decision,
) -> NewEvent:
    """The audit event of a decided change: what every writer of consent records, whichever
    path writes the state (apply_change here; consent.recipient_optout's single statement)."""
    context = {"actor_kind": requested.actor.value, **record.context}
    if decision.clamped:
        context["claimed_occurred_at"] = requested.occurred_at.isoformat()
    if (
        record.confirm_link_to is not None
        and decision.outcome is Outcome.APPLIED
        and decision.status is Status.PENDING
    ):
        context["confirm_link_to"] = record.confirm_link_to
    return NewEvent(
        id=event_id,
        kind=EventKind.CONSENT_CHANGE if topic_key is not None else EventKind.GLOBAL_CONSENT_CHANGE,
        occurred_at=decision.occurred_at,
        actor=record.actor,
        source=record.source,
        outcome=decision.outcome.value,
        contact_id=contact_id,
        address=address,
        topic=topic_key,
        from_status=decision.from_status.value if decision.from_status else None,
        to_status=requested.status.value
        if decision.outcome is Outcome.SUPERSEDED
        else decision.status.value,
        campaign_id=record.campaign_id,
        reason=record.reason,
        evidence=record.evidence,
        context=context,
    )


def record_change(
    session: Session,
    change: ConsentChangeIn,
    *,
    caller: Caller,
    request: RequestContext,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
) -> ConsentChangeOut:
    """Record a consent change from an API client. On a double opt-in topic a subscription is
    left `pending`: with mail on, the confirmation mail is queued in this transaction; with it
    off, the answer carries the confirmation link for the caller to mail. An erased address is
    refused (consent.erased): recording anything would store it again."""
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
    context = request.as_evidence()
    if change.notice is not None:
        context["notice"] = check_consent_notice(
            session, change.notice, occurred_at=min(requested.occurred_at, now)
        )
    mail = mail_config(settings)
    contact = lock_new_contact(session, keys, change.email)
    applied = apply_change(
        session,
        contact=contact,
        topic=topic,
        requested=requested,
        record=ChangeRecord(
            actor=caller.actor,
            source=change.source,
            campaign_id=change.campaign_id,
            reason=change.reason,
            evidence=change.evidence,
            context=context,
            confirm_link_to=CONFIRM_BY_MAIL if mail is not None else caller.actor,
        ),
        now=now,
    )
    link: str | None = None
    if topic is not None and applied.decision.status is Status.PENDING and applied.subscription:
        if mail is not None:
            # The service mails the link itself, in this transaction: the caller never sees
            # it, so only the mailbox can confirm.
            queue_confirmation(
                session,
                mail,
                contact=contact,
                topic=topic,
                pending_event=applied.subscription.event_id,
                campaign_id=change.campaign_id,
                language=change.language or "en",
                now=now,
            )
        else:
            link = confirm_link(
                settings,
                ring,
                contact=contact,
                topic=topic,
                subscription=applied.subscription,
                campaign_id=change.campaign_id,
                now=now,
            )
    return ConsentChangeOut(
        contact_id=contact.public_id,
        email=change.email.given,
        topic=topic.key if topic else None,
        status=applied.decision.status,
        changed=applied.decision.changed,
        outcome=applied.decision.outcome,
        event_id=applied.event_id,
        confirm_url=link,
    )


def confirm_link(
    settings: Settings,
    ring: tuple[SigningKey, ...],
    *,
    contact: Contact,
    topic: Topic,
    subscription: Subscription,
    campaign_id: str | None,
    now: datetime,
) -> str:
    """A confirmation link bound to the event that made this subscription pending."""
    token = sign_token(
        ring,
        TokenPurpose.CONFIRM,
        TokenClaims(
            contact_id=contact.public_id,
            topic=topic.key,
            campaign_id=campaign_id,
            issued_at=now,
            pending_event=subscription.event_id,
        ),
    )
    return confirm_url(settings.base_url, token)


def subscription_change(
    decision: Decision, requested: RequestedChange, *, now: datetime, event_id: str
) -> dict[str, Any]:
    """The columns a decided (not superseded) change sets on its subscription row; a new row
    gets them all (it is always an applied change)."""
    values: dict[str, Any] = {
        "status": decision.status.value,
        "occurred_at": decision.occurred_at,
        "source": requested.source,
        "by_recipient": decision.by_recipient,
    }
    if decision.outcome is Outcome.APPLIED:
        values["since"] = now
        values["event_id"] = event_id
    return values


def suppression_change(
    decision: Decision, requested: RequestedChange, *, now: datetime, was_suppressed: bool | None
) -> dict[str, Any]:
    """The columns a decided (not superseded) contact-wide change sets on the suppression row
    (`was_suppressed` None: there is none yet, and these make it)."""
    suppressed = decision.status is Status.UNSUBSCRIBED
    values: dict[str, Any] = {
        "suppressed": suppressed,
        "occurred_at": decision.occurred_at,
        "source": requested.source,
        "by_recipient": decision.by_recipient,
    }
    if (
        was_suppressed is None
        or was_suppressed != suppressed
        or decision.outcome is Outcome.APPLIED
    ):
        values["since"] = now
    return values


def _apply_topic(
    session: Session,
    contact_id: int,
    topic: Topic,
    requested: RequestedChange,
    *,
    event_id: str,
    now: datetime,
) -> tuple[Decision, Subscription | None]:
    if topic.kind == TopicKind.MARKETING and requested.status is Status.SUBSCRIBED:
        # A person who opted out of all marketing themselves is not re-enrolled topic by topic.
        check_reversal_allowed(
            suppression_state(_active_suppression(session, contact_id)), requested
        )
    assert topic.id is not None
    row = session.get(Subscription, (contact_id, topic.id))
    decision = decide_change(subscription_state(row), requested, now=now)
    if decision.outcome is Outcome.SUPERSEDED:
        return decision, row
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
    for name, value in subscription_change(decision, requested, now=now, event_id=event_id).items():
        setattr(row, name, value)
    session.add(row)
    session.flush()
    return decision, row


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
