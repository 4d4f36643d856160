"""Owns the use cases of the console's contact pages: find a contact by address or id, read it
with its topics, record a staff change (what a person asked the support desk for) under the
consent rules with the staff member as actor, and erase."""

from __future__ import annotations

import re
from datetime import datetime

from sqlmodel import Session, col, select

from prefcenter.admin.schemas import ContactView, StaffChangeIn
from prefcenter.admin.sessions import ActiveSession
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.erasure import erase_contact
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import AppliedChange, apply_change
from prefcenter.consent.models import Subscription
from prefcenter.consent.queries import ContactNotFound, read_contact
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.consent.schemas import ErasureOut
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import (
    find_contact_by_public_id,
    find_contacts,
    lock_contact_by_public_id,
)
from prefcenter.db import utcnow
from prefcenter.topics.errors import UnknownTopic
from prefcenter.topics.models import Topic
from prefcenter.topics.service import find_topic, list_topics

_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Recorded in the event's context beside the request's address and user agent.
CHANNEL = "admin_console"


def find_contact_id(session: Session, query: str) -> str | None:
    """The public id of the contact with this address (when the query holds an `@`) or this
    id, or None when there is none."""
    text = query.strip()
    if "@" in text:
        try:
            address = parse_address(text)
        except InvalidAddress:
            return None
        contact = find_contacts(session, [address.normalised]).get(address.normalised)
    elif _PUBLIC_ID.fullmatch(text):
        contact = find_contact_by_public_id(session, text)
    else:
        contact = None
    return contact.public_id if contact is not None else None


def contact_view(session: Session, contact_id: str, *, now: datetime) -> ContactView:
    contact = read_contact(session, contact_id, with_evidence=True, now=now)
    sources = session.exec(
        select(Topic.key, Subscription.source)
        .join(Subscription, col(Subscription.topic_id) == col(Topic.id))
        .join(Contact, col(Contact.id) == col(Subscription.contact_id))
        .where(Contact.public_id == contact.contact_id)
    )
    return ContactView(contact=contact, topics=list_topics(session), sources=dict(sources.all()))


def record_staff_change(
    session: Session,
    contact_id: str,
    change: StaffChangeIn,
    *,
    actor: str,
    request: RequestContext,
) -> AppliedChange:
    """Apply the change as an admin (so a person's own opt-out may be reversed, with the reason
    on record) and append its audit event, in the caller's transaction."""
    now = utcnow()
    topic: Topic | None = None
    if change.topic is not None:
        topic = find_topic(session, change.topic)
        if topic is None:
            raise UnknownTopic(f"There is no topic {change.topic!r}.")
    contact = lock_contact_by_public_id(session, contact_id)
    if contact is None:
        raise ContactNotFound(f"There is no contact {contact_id!r}, or it was erased.")
    requested = RequestedChange(
        status=Status(change.status.value),
        occurred_at=now,
        actor=ActorKind.ADMIN,
        source=change.source.value,
        reason=change.reason,
        double_opt_in=topic.double_opt_in if topic is not None else False,
    )
    evidence = {"reference": change.evidence} if change.evidence else {}
    return apply_change(
        session,
        contact=contact,
        topic=topic,
        requested=requested,
        record=ChangeRecord(
            actor=actor,
            source=change.source.value,
            reason=change.reason,
            evidence=evidence,
            context={**request.as_evidence(), "channel": CHANNEL},
        ),
        now=now,
    )


def erase(
    session: Session,
    contact_id: str,
    *,
    keys: AuditKeys,
    admin: ActiveSession,
    request: RequestContext,
    now: datetime,
) -> ErasureOut:
    return erase_contact(
        session, contact_id, keys=keys, actor=admin.actor, request=request, now=now
    )
