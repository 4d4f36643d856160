"""Owns sending a double-opt-in confirmation, made from the event that left a subscription
pending: the mail the service queues itself when it sends mail (mail.config; the worker writes
it with its links, delivery.mail), or else the signed link for the API caller to mail.

Below consent on purpose: consent decides that a subscription is pending and names the event;
what a token is and how a link is made stay out of its rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from prefcenter.mail.config import MailConfig, mail_config, new_message_id
from prefcenter.mail.schemas import MailLanguage, MailPayload, MailTemplate
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.outbox.service import enqueue, latest_for_cause
from prefcenter.settings import Settings, SigningKey
from prefcenter.tokens import TokenClaims, TokenPurpose, confirm_url, sign_token

# Asking again for a subscription that is still pending mails the link again, but not sooner
# than this after the last time: a person whose mail went astray can have another, and a
# caller repeating itself cannot fill their mailbox.
RESEND_AFTER = timedelta(hours=1)
# How the pending event's context names who was handed the link: the mailbox itself.
CONFIRM_BY_MAIL = "mail"


@dataclass(frozen=True, slots=True)
class PendingConfirmation:
    """A subscription left pending, as its confirmation names it: the contact, the topic's key,
    the event that made it pending (a confirmation of an older one is refused), the campaign
    of the change and the language of the mail."""

    contact_id: str
    topic: str
    pending_event: str
    campaign_id: str | None
    language: MailLanguage


def send_confirmation(
    session: Session,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    pending: PendingConfirmation,
    *,
    now: datetime,
) -> str | None:
    """What an API client's change that left a subscription pending sends: with mail on, the
    service queues the confirmation mail itself, in this transaction (the caller never sees
    the link, so only the mailbox can confirm), and returns None; with it off, the link for
    the caller to mail."""
    mail = mail_config(settings)
    if mail is not None:
        queue_confirmation(session, mail, pending, now=now)
        return None
    return confirm_link(settings.base_url, ring, pending, now=now)


def confirm_link(
    base_url: str, ring: tuple[SigningKey, ...], pending: PendingConfirmation, *, now: datetime
) -> str:
    """A confirmation link bound to the event that made this subscription pending."""
    token = sign_token(
        ring,
        TokenPurpose.CONFIRM,
        TokenClaims(
            contact_id=pending.contact_id,
            topic=pending.topic,
            campaign_id=pending.campaign_id,
            issued_at=now,
            pending_event=pending.pending_event,
        ),
    )
    return confirm_url(base_url, token)


def queue_confirmation(
    session: Session, mail: MailConfig, pending: PendingConfirmation, *, now: datetime
) -> str | None:
    """Queue the confirmation mail of the subscription that `pending.pending_event` made
    pending; returns its Message-ID, or None when one was queued less than RESEND_AFTER ago."""
    latest = latest_for_cause(session, pending.pending_event, kind=OutboxKind.MAIL)
    if latest is not None and now - latest.created_at < RESEND_AFTER:
        return None
    message_id = new_message_id(mail)
    payload = MailPayload(
        template=MailTemplate.DOUBLE_OPT_IN,
        language=pending.language,
        contact_id=pending.contact_id,
        topic=pending.topic,
        pending_event=pending.pending_event,
        campaign_id=pending.campaign_id,
    )
    enqueue(
        session,
        kind=OutboxKind.MAIL,
        message_id=message_id,
        payload=payload.model_dump(mode="json", exclude_none=True),
        now=now,
        cause_event_id=pending.pending_event,
    )
    return message_id
