"""Owns what the recipient confirms from their mailbox: a double opt-in's pending
subscription, and the reversal of their own opt-out (preference_center.resubscribe)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlmodel import Session

from prefcenter.audit.context import RequestContext
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import mask_address
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.outbox.service import latest_for_cause
from prefcenter.preference_center.errors import InvalidLink
from prefcenter.preference_center.resubscribe import Reversal, find_reversal, reverse_opt_out
from prefcenter.preference_center.schemas import LinkView
from prefcenter.preference_center.service import (
    Channel,
    recipient_record,
    token_contact,
    token_topic,
)
from prefcenter.tokens import TokenPurpose, VerifiedToken
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind


def _pending_subscription(
    session: Session, verified: VerifiedToken, contact: Contact
) -> tuple[Topic, Subscription]:
    """The subscription this confirmation link was issued for, still pending since the event
    the link names; anything else (confirmed already, changed since) makes the link stale."""
    topic = token_topic(session, verified)
    if topic is None or topic.id is None or contact.id is None:
        raise InvalidLink(400, expired=True)
    suppression = session.get(Suppression, contact.id)
    if topic.kind == TopicKind.MARKETING and suppression is not None and suppression.suppressed:
        # Opted out of all marketing since (or before): confirming would promise mail that
        # is never sent. The preference center is where the person can lift it. A sharing
        # topic is not mail: that opt-out says nothing about it.
        raise InvalidLink(400, expired=True)
    subscription = session.get(Subscription, (contact.id, topic.id))
    if subscription is not None and subscription.status == Status.SUBSCRIBED:
        return topic, subscription  # confirmed already (a second click): nothing to do
    if (
        subscription is None
        or subscription.status != Status.PENDING
        or subscription.event_id != verified.claims.pending_event
    ):
        raise InvalidLink(400, expired=True)
    return topic, subscription


def _reversal(session: Session, verified: VerifiedToken, *, lock: bool) -> Reversal:
    reversal = find_reversal(session, verified, lock=lock)
    if reversal is None or reversal.contact.address is None:
        raise InvalidLink(400, expired=True)  # the opt-out it names has moved on
    return reversal


def _party(topic: Topic | None) -> str | None:
    """The third party a confirmation names: a sharing topic's; None for mail."""
    if topic is None or topic.kind != TopicKind.SHARING:
        return None
    return topic.third_party


def _reversal_view(reversal: Reversal) -> LinkView:
    assert reversal.contact.address is not None
    return LinkView(
        masked_address=mask_address(reversal.contact.address),
        topic_name=reversal.topic.name if reversal.topic is not None else None,
        third_party=_party(reversal.topic),
    )


def confirm_view(session: Session, verified: VerifiedToken) -> LinkView:
    if verified.purpose is TokenPurpose.RESUBSCRIBE:
        return _reversal_view(_reversal(session, verified, lock=False))
    contact = token_contact(session, verified, lock=False)
    topic, _ = _pending_subscription(session, verified, contact)
    assert contact.address is not None
    return LinkView(
        masked_address=mask_address(contact.address),
        topic_name=topic.name,
        third_party=_party(topic),
    )


def confirm(
    session: Session, verified: VerifiedToken, *, request: RequestContext, now: datetime
) -> LinkView:
    """Turn the pending subscription into `subscribed`: the person's own act, from their
    mailbox. A link used again afterwards finds nothing pending and changes nothing. A
    resubscribe link turns back on what the person refused (preference_center.resubscribe)."""
    if verified.purpose is TokenPurpose.RESUBSCRIBE:
        reversal = _reversal(session, verified, lock=True)
        reverse_opt_out(
            session,
            reversal,
            record=recipient_record(verified, Channel.CONFIRMATION, request),
            now=now,
        )
        return _reversal_view(reversal)
    contact = token_contact(session, verified, lock=True)
    topic, subscription = _pending_subscription(session, verified, contact)
    assert contact.address is not None
    view = LinkView(
        masked_address=mask_address(contact.address),
        topic_name=topic.name,
        third_party=_party(topic),
    )
    if subscription.status == Status.SUBSCRIBED:
        return view
    record = recipient_record(verified, Channel.CONFIRMATION, request)
    message_id = _confirmation_message_id(session, subscription.event_id)
    if message_id is not None:
        record = replace(record, evidence={**record.evidence, "message_id": message_id})
    apply_change(
        session,
        contact=contact,
        topic=topic,
        requested=RequestedChange(
            status=Status.SUBSCRIBED,
            occurred_at=now,
            actor=ActorKind.RECIPIENT,
            source=Channel.CONFIRMATION.value,
            double_opt_in=True,
            confirmed=True,
        ),
        record=record,
        now=now,
    )
    return view


def _confirmation_message_id(session: Session, pending_event: str) -> str | None:
    """The Message-ID of the mail that carried this confirmation link, when the service sent
    it: the trail then shows that the link reached that mailbox. When the person asked more
    than once, the newest sent; none sent yet, a queued one (a worker that sent it and stopped
    before recording so: the click shows it arrived)."""
    for status in (OutboxStatus.SENT, OutboxStatus.QUEUED):
        mail = latest_for_cause(session, pending_event, kind=OutboxKind.MAIL, status=status)
        if mail is not None:
            return mail.message_id
    return None
