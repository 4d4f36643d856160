"""Use cases of the recipient: unsubscribe (page or RFC 8058 one-click), confirm a double opt-in
or a resubscribe link (the preference center's choices are in `choices`). The token is the only
credential."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from prefcenter.audit.context import RequestContext
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import (
    find_contact_by_public_id,
    lock_contact_by_public_id,
    mask_address,
)
from prefcenter.outbox.schemas import OutboxKind, OutboxStatus
from prefcenter.outbox.service import latest_for_cause
from prefcenter.preference_center.errors import InvalidLink
from prefcenter.preference_center.resubscribe import (
    Reversal,
    find_reversal,
    reverse_opt_out,
)
from prefcenter.preference_center.schemas import LinkView
from prefcenter.settings import SigningKey
from prefcenter.tokens import (
    RetiredKey,
    TokenError,
    TokenPurpose,
    VerifiedToken,
    verify_token,
)
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.topics.service import find_topic

RECIPIENT_ACTOR = "recipient"


class Channel(StrEnum):
    """How the person acted; recorded as the audit event's source. All are the person's own."""

    ONE_CLICK = "one_click"
    UNSUBSCRIBE_PAGE = "unsubscribe_page"
    PREFERENCE_CENTER = "preference_center"
    CONFIRMATION = "confirmation"
    MAILTO = "mailto"  # a message to the `mailto:` of List-Unsubscribe (inbound.mailto)


def read_token(
    ring: tuple[SigningKey, ...],
    token: str,
    purpose: TokenPurpose,
    *,
    now: datetime,
    max_age: timedelta | None = None,
    retired: frozenset[str] = frozenset(),
) -> VerifiedToken:
    """Checked before any database work: a bad token costs one HMAC. A link signed with a
    retired key gets the "expired" page, any other refused one the "does not work" page."""
    try:
        return verify_token(ring, purpose, token, now=now, max_age=max_age, retired=retired)
    except RetiredKey as exc:
        raise InvalidLink(400, retired=True) from exc
    except TokenError as exc:
        raise InvalidLink(400, expired=purpose is TokenPurpose.CONFIRM) from exc


def link_contact(session: Session, verified: VerifiedToken, *, lock: bool) -> Contact:
    public_id = verified.claims.contact_id
    contact = (
        lock_contact_by_public_id(session, public_id)
        if lock
        else find_contact_by_public_id(session, public_id)
    )
    if contact is None or contact.erased_at is not None or contact.address is None:
        raise InvalidLink(404)
    return contact


def _token_topic(session: Session, verified: VerifiedToken) -> Topic | None:
    """The token's topic; a topic that no longer exists falls back to all marketing (when in
    doubt, suppress more)."""
    if verified.claims.topic is None:
        return None
    return find_topic(session, verified.claims.topic)


def recipient_record(
    verified: VerifiedToken, channel: Channel, request: RequestContext
) -> ChangeRecord:
    """Who acted and the proof of it, as every recipient change records it."""
    evidence: dict[str, Any] = {
        "channel": channel.value,
        "token_kid": verified.kid,
        "token_topic": verified.claims.topic,
        "token_issued_at": verified.claims.issued_at.isoformat(),
        **request.as_evidence(),
    }
    return ChangeRecord(
        actor=RECIPIENT_ACTOR,
        source=channel.value,
        campaign_id=verified.claims.campaign_id,
        evidence=evidence,
    )


def recipient_change(status: Status, channel: Channel, now: datetime) -> RequestedChange:
    """The person's own change, made now."""
    return RequestedChange(
        status=status, occurred_at=now, actor=ActorKind.RECIPIENT, source=channel.value
    )


def unsubscribe_view(session: Session, verified: VerifiedToken) -> LinkView:
    contact = link_contact(session, verified, lock=False)
    topic = _token_topic(session, verified)
    assert contact.address is not None
    return LinkView(
        masked_address=mask_address(contact.address), topic_name=topic.name if topic else None
    )


def unsubscribe(
    session: Session,
    verified: VerifiedToken,
    *,
    channel: Channel,
    request: RequestContext,
    now: datetime,
    evidence: Mapping[str, Any] | None = None,
) -> LinkView:
    """Opt out of the token's topic, or of all marketing. Repeating it changes nothing more.

    The topic comes from the token only: nothing in the request can widen or redirect it.
    `evidence` adds to what the record keeps (a mailto: message's `Message-ID`).
    """
    topic = _token_topic(session, verified)
    contact = link_contact(session, verified, lock=True)
    record = recipient_record(verified, channel, request)
    if evidence:
        record = replace(record, evidence={**record.evidence, **evidence})
    apply_change(
        session,
        contact=contact,
        topic=topic,
        requested=recipient_change(Status.UNSUBSCRIBED, channel, now),
        record=record,
        now=now,
    )
    assert contact.address is not None
    return LinkView(
        masked_address=mask_address(contact.address), topic_name=topic.name if topic else None
    )


def _pending_subscription(
    session: Session, verified: VerifiedToken, contact: Contact
) -> tuple[Topic, Subscription]:
    """The subscription this confirmation link was issued for, still pending since the event
    the link names; anything else (confirmed already, changed since) makes the link stale."""
    topic = _token_topic(session, verified)
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


def _reversal_view(reversal: Reversal) -> LinkView:
    assert reversal.contact.address is not None
    return LinkView(
        masked_address=mask_address(reversal.contact.address),
        topic_name=reversal.topic.name if reversal.topic is not None else None,
    )


def confirm_view(session: Session, verified: VerifiedToken) -> LinkView:
    if verified.purpose is TokenPurpose.RESUBSCRIBE:
        return _reversal_view(_reversal(session, verified, lock=False))
    contact = link_contact(session, verified, lock=False)
    topic, _ = _pending_subscription(session, verified, contact)
    assert contact.address is not None
    return LinkView(masked_address=mask_address(contact.address), topic_name=topic.name)


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
    contact = link_contact(session, verified, lock=True)
    topic, subscription = _pending_subscription(session, verified, contact)
    assert contact.address is not None
    view = LinkView(masked_address=mask_address(contact.address), topic_name=topic.name)
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
