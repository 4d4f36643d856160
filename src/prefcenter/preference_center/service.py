"""Owns the recipient's use cases: unsubscribe (page or RFC 8058 one-click) and choose topics
in the preference center; confirming is `confirmation`'s. The token is the only credential."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import Session, col, select

from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.opt_out_markers import all_marker, topic_marker
from prefcenter.consent.rules import ActorKind, RequestedChange, Status, needs_mailbox_proof
from prefcenter.consent.service import ChangeRecord, apply_change, subscription_state
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import (
    find_contact_by_public_id,
    lock_contact_by_public_id,
    mask_address,
)
from prefcenter.mail.config import MailConfig
from prefcenter.mail.schemas import MailLanguage
from prefcenter.preference_center.errors import InvalidLink
from prefcenter.preference_center.resubscribe import (
    queue_resubscribe_mail,
)
from prefcenter.preference_center.schemas import LinkView, PreferencesView, TopicChoice
from prefcenter.settings import SigningKey
from prefcenter.tokens import TokenError, TokenPurpose, VerifiedToken, verify_token
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import ConsentModel, TopicKind
from prefcenter.topics.service import find_topic

RECIPIENT_ACTOR = "recipient"


class Channel(StrEnum):
    """How the person acted; recorded as the audit event's source. All are the person's own."""

    ONE_CLICK = "one_click"
    UNSUBSCRIBE_PAGE = "unsubscribe_page"
    PREFERENCE_CENTER = "preference_center"
    CONFIRMATION = "confirmation"
    MAILTO = "mailto"  # a message to the `mailto:` of List-Unsubscribe (inbound.mailto)


@dataclass(frozen=True, slots=True)
class ResubscribeByMail:
    """How the preference center asks the mailbox before turning back on what the person
    refused: the service's mail, the audit keys (the throttle counts by keyed hash) and the
    language of the page."""

    mail: MailConfig
    keys: AuditKeys
    language: MailLanguage

    def queue(
        self,
        session: Session,
        contact: Contact,
        topic_key: str | None,
        marker: str,
        request: RequestContext,
        now: datetime,
    ) -> bool:
        return queue_resubscribe_mail(
            session,
            self.mail,
            self.keys,
            contact=contact,
            topic_key=topic_key,
            marker=marker,
            client_ip=request.client_ip,
            language=self.language,
            now=now,
        )


def read_token(
    ring: tuple[SigningKey, ...],
    token: str,
    purpose: TokenPurpose,
    *,
    now: datetime,
    max_age: timedelta | None = None,
) -> VerifiedToken:
    """Checked before any database work: a bad token costs one HMAC."""
    try:
        return verify_token(ring, purpose, token, now=now, max_age=max_age)
    except TokenError as exc:
        raise InvalidLink(400, expired=purpose is TokenPurpose.CONFIRM) from exc


def token_contact(session: Session, verified: VerifiedToken, *, lock: bool) -> Contact:
    public_id = verified.claims.contact_id
    contact = (
        lock_contact_by_public_id(session, public_id)
        if lock
        else find_contact_by_public_id(session, public_id)
    )
    if contact is None or contact.erased_at is not None or contact.address is None:
        raise InvalidLink(404)
    return contact


def token_topic(session: Session, verified: VerifiedToken) -> Topic | None:
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
    contact = token_contact(session, verified, lock=False)
    topic = token_topic(session, verified)
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
    topic = token_topic(session, verified)
    contact = token_contact(session, verified, lock=True)
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


def _marketing_topics(session: Session) -> list[Topic]:
    return list(
        session.exec(
            select(Topic).where(Topic.kind == TopicKind.MARKETING).order_by(col(Topic.name))
        )
    )


def _is_on(topic: Topic, subscription: Subscription | None) -> bool:
    """What the checkbox shows: opt-in topics are on once subscribed (or pending), opt-out
    topics until unsubscribed."""
    if subscription is None:
        return topic.consent == ConsentModel.OPT_OUT
    return subscription.status != Status.UNSUBSCRIBED


def _view(
    session: Session,
    contact: Contact,
    pending_topics: list[str],
    refused_topics: list[str] | None = None,
    *,
    confirm_all_by_mail: bool = False,
) -> PreferencesView:
    assert contact.id is not None
    assert contact.address is not None
    subscriptions = {
        s.topic_id: s
        for s in session.exec(select(Subscription).where(Subscription.contact_id == contact.id))
    }
    suppression = session.get(Suppression, contact.id)
    suppressed = bool(suppression and suppression.suppressed)
    choices = []
    for topic in _marketing_topics(session):
        assert topic.id is not None
        subscription = subscriptions.get(topic.id)
        choices.append(
            TopicChoice(
                key=topic.key,
                name=topic.name,
                description=topic.description,
                # Opted out of everything: nothing is sent, so no box may say otherwise.
                on=not suppressed and _is_on(topic, subscription),
                pending=subscription is not None and subscription.status == Status.PENDING,
            )
        )
    return PreferencesView(
        masked_address=mask_address(contact.address),
        suppressed=suppressed,
        topics=choices,
        pending_topics=pending_topics,
        refused_topics=refused_topics or [],
        confirm_all_by_mail=confirm_all_by_mail,
    )


def preferences_view(session: Session, verified: VerifiedToken) -> PreferencesView:
    return _view(session, token_contact(session, verified, lock=False), [])


def save_preferences(
    session: Session,
    verified: VerifiedToken,
    *,
    chosen: set[str],
    shown: set[str],
    unsubscribe_all: bool,
    request: RequestContext,
    now: datetime,
    by_mail: ResubscribeByMail | None = None,
) -> PreferencesView:
    """Apply what the person chose on the page: only topics that were shown and whose box
    differs from the current state change. Turning a topic off, or on where the person never
    opted out themselves, takes effect at once (a double opt-in topic goes to `pending`).
    Reversing the person's own opt-out, or lifting "unsubscribe from all", is not done from a
    link: whoever holds the link could do it (see rules.needs_mailbox_proof). With `by_mail`
    (the service sends mail), a mail to the address carries the link that does it
    (preference_center.resubscribe); without, those topics are left as they were and named on
    the page, with how to reach the support desk."""
    topics = {t.key: t for t in _marketing_topics(session)}
    contact = token_contact(session, verified, lock=True)
    assert contact.id is not None
    record = recipient_record(verified, Channel.PREFERENCE_CENTER, request)
    if unsubscribe_all:
        apply_change(
            session,
            contact=contact,
            topic=None,
            requested=recipient_change(Status.UNSUBSCRIBED, Channel.PREFERENCE_CENTER, now),
            record=record,
            now=now,
        )
        return _view(session, contact, [])
    subscriptions = {
        s.topic_id: s
        for s in session.exec(select(Subscription).where(Subscription.contact_id == contact.id))
    }
    wanted = {key for key in chosen if key in topics and key in shown}
    suppression = session.get(Suppression, contact.id)
    if suppression is not None and suppression.suppressed:
        # Every box showed off. Ticking any asks to lift the opt-out from all marketing: that
        # needs the mailbox's proof, so nothing changes now (saving the page as it was chose
        # nothing at all).
        if wanted and by_mail is not None:
            sent = by_mail.queue(session, contact, None, all_marker(suppression), request, now)
            return _view(session, contact, [], [], confirm_all_by_mail=sent)
        refused = [topics[key].name for key in sorted(wanted)]
        return _view(session, contact, [], refused)
    pending: list[str] = []
    refused = []
    for key in sorted(shown & set(topics)):
        topic = topics[key]
        assert topic.id is not None
        subscription = subscriptions.get(topic.id)
        want_on = key in wanted
        if want_on == _is_on(topic, subscription):
            continue
        if want_on and needs_mailbox_proof(subscription_state(subscription)):
            assert subscription is not None  # an opt-out is a row
            marker = topic_marker(subscription)
            if by_mail is not None and by_mail.queue(
                session, contact, topic.key, marker, request, now
            ):
                pending.append(topic.name)
            else:
                refused.append(topic.name)
            continue
        status = Status.SUBSCRIBED if want_on else Status.UNSUBSCRIBED
        requested = RequestedChange(
            status=status,
            occurred_at=now,
            actor=ActorKind.RECIPIENT,
            source=Channel.PREFERENCE_CENTER.value,
            # Ticking a box proves the click, not who owns the mailbox: a double opt-in topic
            # still needs the confirmation link that the mail tool sends.
            double_opt_in=topic.double_opt_in,
        )
        applied = apply_change(
            session, contact=contact, topic=topic, requested=requested, record=record, now=now
        )
        if applied.decision.status is Status.PENDING:
            pending.append(topic.name)
    return _view(session, contact, pending, refused)
