"""Owns turning back on what the person refused themselves, from the preference center: not at
the click (whoever holds the link could click), but when the person follows a link that the
service mailed to the address (proof that they hold the mailbox), within 48 hours.

The mail names the opt-out it reverses (a marker: the topic's opt-out event, or the time the
"unsubscribe from all" began), so its link stops working once that state has moved on. Nothing
is pending meanwhile: the stored state stays the person's own, guarded opt-out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.opt_out_markers import current_marker
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import find_contact_by_public_id, lock_contact_by_public_id
from prefcenter.mail.config import MailConfig, new_message_id
from prefcenter.mail.schemas import MailLanguage, MailPayload, MailTemplate
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.outbox.service import enqueue, latest_for_cause
from prefcenter.preference_center.mail_requests import allow_mail_request
from prefcenter.tokens import VerifiedToken
from prefcenter.topics.models import Topic
from prefcenter.topics.service import find_topic

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


@dataclass(frozen=True, slots=True)
class Reversal:
    """What a resubscribe link turns back on, once its opt-out is checked to be still there."""

    contact: Contact
    topic: Topic | None  # None: marketing as a whole ("unsubscribe from all")
    marker: str


def find_reversal(session: Session, verified: VerifiedToken, *, lock: bool) -> Reversal | None:
    """The opt-out the link names, if it is still the current one (else the link is stale:
    None). An erased contact, or a topic that no longer exists, is stale too."""
    claims = verified.claims
    contact = (
        lock_contact_by_public_id(session, claims.contact_id)
        if lock
        else find_contact_by_public_id(session, claims.contact_id)
    )
    if contact is None or contact.id is None or contact.erased_at is not None:
        return None
    topic = find_topic(session, claims.topic) if claims.topic is not None else None
    if claims.topic is not None and (topic is None or topic.id is None):
        return None
    subscription = (
        session.get(Subscription, (contact.id, topic.id))
        if topic is not None and topic.id is not None
        else None
    )
    suppression = session.get(Suppression, contact.id)
    marker = current_marker(subscription, suppression, topic=topic is not None)
    if marker is None or marker != claims.pending_event:
        return None
    return Reversal(contact=contact, topic=topic, marker=marker)


def reverse_opt_out(
    session: Session, reversal: Reversal, *, record: ChangeRecord, now: datetime
) -> None:
    """The person's own act, from their mailbox: the topic is subscribed again (or the
    opt-out from all marketing lifted), with the mail's Message-ID as proof."""
    message_id = resubscribe_message_id(session, reversal.marker)
    if message_id is not None:
        record = replace(record, evidence={**record.evidence, "message_id": message_id})
    apply_change(
        session,
        contact=reversal.contact,
        topic=reversal.topic,
        requested=RequestedChange(
            status=Status.SUBSCRIBED,
            occurred_at=now,
            actor=ActorKind.RECIPIENT,
            source="confirmation",
            # The mailbox confirmed it: a double opt-in topic needs nothing more.
            double_opt_in=reversal.topic.double_opt_in if reversal.topic is not None else False,
            confirmed=True,
        ),
        record=record,
        now=now,
    )
