"""Owns the double-opt-in confirmation mail: queued in the transaction of the change that
leaves a subscription pending, when the service sends mail itself (mail.config). The worker
writes it when it sends it (delivery.mail), with the confirmation and preference links."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from prefcenter.mail.config import MailConfig, new_message_id
from prefcenter.mail.schemas import MailLanguage, MailPayload, MailTemplate
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.outbox.service import enqueue, latest_for_cause
from prefcenter.topics.models import Topic

# Asking again for a subscription that is still pending mails the link again, but not sooner
# than this after the last time: a person whose mail went astray can have another, and a
# caller repeating itself cannot fill their mailbox.
RESEND_AFTER = timedelta(hours=1)
# How the pending event's context names who was handed the link: the mailbox itself.
CONFIRM_BY_MAIL = "mail"


def queue_confirmation(
    session: Session,
    mail: MailConfig,
    *,
    contact_id: str,
    topic: Topic,
    pending_event: str,
    campaign_id: str | None,
    language: MailLanguage,
    now: datetime,
) -> str | None:
    """Queue the confirmation mail of the subscription that `pending_event` made pending;
    returns its Message-ID, or None when one was queued less than RESEND_AFTER ago."""
    latest = latest_for_cause(session, pending_event, kind=OutboxKind.MAIL)
    if latest is not None and now - latest.created_at < RESEND_AFTER:
        return None
    message_id = new_message_id(mail)
    payload = MailPayload(
        template=MailTemplate.DOUBLE_OPT_IN,
        language=language,
        contact_id=contact_id,
        topic=topic.key,
        pending_event=pending_event,
        campaign_id=campaign_id,
    )
    enqueue(
        session,
        kind=OutboxKind.MAIL,
        message_id=message_id,
        payload=payload.model_dump(mode="json", exclude_none=True),
        now=now,
        cause_event_id=pending_event,
    )
    return message_id
