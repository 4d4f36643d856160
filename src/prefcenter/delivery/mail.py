"""Owns writing the service's queued mail: from each payload, the recipient (read now, so an
erased contact gets nothing), the links (tokens signed now) and the message; and the audit
event of a mail sent."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from prefcenter.audit.schemas import EventKind, NewEvent
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.opt_out_markers import current_marker
from prefcenter.consent.rules import Status
from prefcenter.contacts.models import Contact
from prefcenter.delivery.notice_mail import (
    Choices,
    NoticeFacts,
    asked_again,
    choices_of,
    notice_context,
    notices_of,
)
from prefcenter.mail.config import MailConfig
from prefcenter.mail.messages import MailTemplates, compose
from prefcenter.mail.schemas import MailPayload, MailTemplate
from prefcenter.outbox.schemas import Claimed
from prefcenter.settings import Settings, SigningKey
from prefcenter.templating import DEFAULT_LANGUAGE
from prefcenter.tokens import (
    TokenClaims,
    TokenPurpose,
    confirm_url,
    preferences_url,
    sign_token,
)
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind

logger = logging.getLogger(__name__)

MAIL_ACTOR = "prefcenter:outbox"
MAIL_SOURCE = "mail"
templates = MailTemplates()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed mail, written and ready to send; or why it will not be (`skip`)."""

    claimed: Claimed
    payload: MailPayload | None
    message: Message | None = None
    recipient: str | None = None  # the address as stored (its keyed hash goes in the trail)
    envelope_recipient: str | None = None  # as the message's To says it (IDNA domain)
    # Set when there is nothing to send: cancelled (True) or broken for good (False).
    skip: str | None = None
    cancel: bool = True


def write_mail(
    session: Session,
    batch: Sequence[Claimed],
    *,
    config: MailConfig,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    now: datetime,
) -> list[Outgoing]:
    """Each claimed mail of `batch` written, in order; three queries for the whole batch."""
    payloads: list[MailPayload | None] = []
    for claimed in batch:
        try:
            payloads.append(MailPayload.model_validate(claimed.payload))
        except ValidationError:
            payloads.append(None)
    public_ids = {p.contact_id for p in payloads if p is not None and p.contact_id}
    topic_keys = {p.topic for p in payloads if p is not None and p.topic}
    contacts = {
        c.public_id: c
        for c in session.exec(select(Contact).where(col(Contact.public_id).in_(public_ids)))
    }
    topics = {t.key: t for t in session.exec(select(Topic).where(col(Topic.key).in_(topic_keys)))}
    pending: dict[tuple[int, int], str] = {}
    if contacts and topics:
        for row in session.exec(
            select(Subscription).where(
                col(Subscription.contact_id).in_([c.id for c in contacts.values()]),
                col(Subscription.topic_id).in_([t.id for t in topics.values()]),
                col(Subscription.status) == Status.PENDING.value,
            )
        ):
            pending[(row.contact_id, row.topic_id)] = row.event_id
    markers = _opt_out_markers(session, payloads, contacts, topics)
    notices = notices_of(session, payloads)
    choices = choices_of(session, payloads, contacts, notices)
    asked = asked_again(session, payloads, contacts, notices)
    written = []
    for claimed, payload in zip(batch, payloads, strict=True):
        if payload is None:
            written.append(Outgoing(claimed, None, skip="unreadable payload", cancel=False))
            continue
        written.append(
            _write_one(
                claimed,
                payload,
                contacts=contacts,
                topics=topics,
                pending=pending,
                markers=markers,
                notices=notices,
                choices=choices,
                asked=asked,
                config=config,
                settings=settings,
                ring=ring,
                now=now,
            )
        )
    return written


def _write_one(
    claimed: Claimed,
    payload: MailPayload,
    *,
    contacts: dict[str, Contact],
    topics: dict[str, Topic],
    pending: dict[tuple[int, int], str],
    markers: dict[tuple[str, str | None], str | None],
    notices: dict[str, NoticeFacts],
    choices: dict[int, Choices],
    asked: dict[tuple[int, str], list[str]],
    config: MailConfig,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    now: datetime,
) -> Outgoing:
    language = payload.language
    context: dict[str, Any] = {
        "organization": settings.organization_name,
        "preferences_url": None,
    }
    recipient: str | None
    if payload.template is MailTemplate.TEST:
        recipient = payload.to
        context["base_url"] = settings.base_url
    else:
        contact = contacts.get(payload.contact_id or "")
        if contact is None or contact.address is None:
            return Outgoing(claimed, payload, skip="the contact was erased")
        recipient = contact.address
        manage = sign_token(
            ring,
            TokenPurpose.MANAGE,
            TokenClaims(
                contact_id=contact.public_id,
                topic=None,
                campaign_id=payload.campaign_id,
                issued_at=now,
            ),
        )
        context["preferences_url"] = _in_language(
            preferences_url(settings.base_url, manage), language
        )
        if payload.template is MailTemplate.DOUBLE_OPT_IN:
            topic = topics.get(payload.topic or "")
            if (
                topic is None
                or contact.id is None
                or topic.id is None
                or pending.get((contact.id, topic.id)) != payload.pending_event
            ):
                # Confirmed, changed or opted out since: a link to confirm would only mislead.
                return Outgoing(claimed, payload, skip="the subscription is no longer pending")
            confirm = sign_token(
                ring,
                TokenPurpose.CONFIRM,
                TokenClaims(
                    contact_id=contact.public_id,
                    topic=topic.key,
                    campaign_id=payload.campaign_id,
                    issued_at=now,
                    pending_event=payload.pending_event,
                ),
            )
            context.update(
                topic_name=topic.name,
                third_party=sharing_party(topic),
                confirm_url=_in_language(confirm_url(settings.base_url, confirm), language),
                link_days=settings.confirm_link_ttl_days,
            )
        elif payload.template is MailTemplate.RESUBSCRIBE:
            topic = topics.get(payload.topic or "") if payload.topic else None
            if payload.topic is not None and topic is None:
                return Outgoing(claimed, payload, skip="the topic no longer exists")
            if markers.get((payload.contact_id or "", payload.topic)) != payload.pending_event:
                # Changed since: the link would name an opt-out that is no longer there.
                return Outgoing(claimed, payload, skip="the opt-out has changed since")
            token = sign_token(
                ring,
                TokenPurpose.RESUBSCRIBE,
                TokenClaims(
                    contact_id=contact.public_id,
                    topic=payload.topic,
                    campaign_id=None,
                    issued_at=now,
                    pending_event=payload.pending_event,
                ),
            )
            context.update(
                topic_name=topic.name if topic is not None else None,
                third_party=sharing_party(topic),
                confirm_url=_in_language(confirm_url(settings.base_url, token), language),
            )
        elif payload.template is MailTemplate.NOTICE:
            facts = notices.get(payload.notice or "")
            if facts is None:
                return Outgoing(claimed, payload, skip="unknown notice version", cancel=False)
            context.update(
                notice_context(
                    facts, choices.get(contact.id or 0), asked.get((contact.id or 0, facts.key))
                )
            )
    if not recipient:
        return Outgoing(claimed, payload, skip="no recipient", cancel=False)
    try:
        message = compose(
            templates.write(payload.template.value, language, context),
            sender=config.sender,
            recipient=recipient,
            message_id=claimed.message_id,
            date=claimed.created_at,
            language=language,
        )
    except (ValueError, TypeError) as exc:
        # An address the `email` package cannot put in a header (it refuses, rather than
        # write a broken one): no retry makes it better.
        logger.warning("mail %s cannot be written: %s", claimed.message_id, type(exc).__name__)
        return Outgoing(claimed, payload, skip="cannot be written as a mail", cancel=False)
    return Outgoing(
        claimed,
        payload,
        message=message,
        recipient=recipient,
        envelope_recipient=str(message["To"]),
    )


def _opt_out_markers(
    session: Session,
    payloads: Sequence[MailPayload | None],
    contacts: dict[str, Contact],
    topics: dict[str, Topic],
) -> dict[tuple[str, str | None], str | None]:
    """The current opt-out of each (contact, topic or None) a resubscribe mail of the batch
    names (consent.opt_out_markers); a few rows at most, read one by one."""
    found: dict[tuple[str, str | None], str | None] = {}
    for payload in payloads:
        if payload is None or payload.template is not MailTemplate.RESUBSCRIBE:
            continue
        contact = contacts.get(payload.contact_id or "")
        if contact is None or contact.id is None:
            continue
        topic = topics.get(payload.topic) if payload.topic else None
        subscription = (
            session.get(Subscription, (contact.id, topic.id))
            if topic is not None and topic.id is not None
            else None
        )
        suppression = session.get(Suppression, contact.id)
        found[(contact.public_id, payload.topic)] = current_marker(
            subscription, suppression, topic=payload.topic is not None
        )
    return found


def sharing_party(topic: Topic | None) -> str | None:
    """A sharing topic's third party, which its confirmation mails name; None for mail."""
    if topic is None or topic.kind != TopicKind.SHARING:
        return None
    return topic.third_party


def _in_language(url: str, language: str) -> str:
    """The page opens in the mail's language, whatever the browser says."""
    return url if language == DEFAULT_LANGUAGE else f"{url}?lang={language}"


def mail_sent_event(outgoing: Outgoing, *, sent_at: datetime, transport: str) -> NewEvent:
    """The audit event of a mail handed to the transport: its Message-ID, which message and
    why (the event that caused it). The address is only in the chain as its keyed hash."""
    payload = outgoing.payload
    assert payload is not None
    return NewEvent(
        kind=EventKind.MAIL_SENT,
        occurred_at=sent_at,
        actor=MAIL_ACTOR,
        source=MAIL_SOURCE,
        outcome="sent",
        contact_id=payload.contact_id,
        address=outgoing.recipient,
        topic=payload.topic,
        campaign_id=payload.campaign_id,
        evidence={
            "message_id": outgoing.claimed.message_id,
            "template": payload.template.value,
            "transport": transport,
            **({"notice": payload.notice} if payload.notice is not None else {}),
        },
        context={
            "cause_event": outgoing.claimed.cause_event_id,
            "attempt": outgoing.claimed.attempts + 1,
        },
    )
