"""Owns turning back on what the person refused themselves, from the preference center: not at
the click (whoever holds the link could click), but when the person follows a link that the
service mailed to the address (proof that they hold the mailbox), within 48 hours.

The mail names the opt-out it reverses (a marker: the topic's opt-out event, or the time the
"unsubscribe from all" began), so its link stops working once that state has moved on. Nothing
is pending meanwhile: the stored state stays the person's own, guarded opt-out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.contacts.models import Contact
from prefcenter.mail.config import MailConfig, new_message_id
from prefcenter.mail.schemas import MailLanguage, MailPayload, MailTemplate
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.outbox.service import enqueue, latest_for_cause
from prefcenter.preference_center.mail_requests import allow_mail_request

# How long the mailed link works.
LINK_LIFETIME = timedelta(hours=48)


def queue_resubscribe_mail(
    session: Session,
    mail: MailConfig,
    keys: AuditKeys,
    *,
    contact: Contact,
    topic_key: str | None,
    marker: str,
    client_ip: str | None,
    language: MailLanguage,
    now: datetime,
) -> bool:
    """Queue the mail whose link turns `topic_key` (None: marketing as a whole) back on, in the
    caller's transaction. False when the throttle refuses it (mail_requests): a page anyone with
    the link can post must not flood the person's mailbox. One mail per opt-out an hour."""
    assert contact.address is not None
    latest = latest_for_cause(session, marker, kind=OutboxKind.MAIL)
    if latest is not None and now - latest.created_at < timedelta(hours=1):
        return True  # already on its way
    refused = allow_mail_request(
        session, address_hash=keys.address_hash(contact.address), client_ip=client_ip, now=now
    )
    if refused is not None:
        return False
    payload = MailPayload(
        template=MailTemplate.RESUBSCRIBE,
        language=language,
        contact_id=contact.public_id,
        topic=topic_key,
        pending_event=marker,
    )
    enqueue(
        session,
        kind=OutboxKind.MAIL,
        message_id=new_message_id(mail),
        payload=payload.model_dump(mode="json", exclude_none=True),
        now=now,
        cause_event_id=marker,
    )
    return True


def resubscribe_message_id(session: Session, marker: str) -> str | None:
    """The Message-ID of the mail that carried the link: the proof the trail keeps."""
    mail = latest_for_cause(session, marker, kind=OutboxKind.MAIL)
    return mail.message_id if mail is not None else None
