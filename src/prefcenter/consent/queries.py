"""Read side of consent: look contacts up by address, and read one contact with its history.

Set-based: a fixed number of queries per request, whatever the number of addresses.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.reading import events_of_contact
from prefcenter.audit.schemas import ScopedAuditEventOut
from prefcenter.bounces.service import bounce_of, bounced_among
from prefcenter.consent.erased import erased_among
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Status
from prefcenter.consent.schemas import (
    ContactLookup,
    ContactOut,
    LookupOut,
    SubscriptionOut,
    SuppressionOut,
)
from prefcenter.contacts.addresses import Address
from prefcenter.contacts.service import find_contact_by_public_id, find_contacts
from prefcenter.notices.reconsent import reconsent_by_notice
from prefcenter.problems import NotFound
from prefcenter.topics.models import Topic

# What contacts.service.new_public_id makes (URL-safe base64); anything else cannot exist, and
# text with NUL would not even reach PostgreSQL.
_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def is_public_id(text: str) -> bool:
    """Whether the text could be a contact's public id at all."""
    return _PUBLIC_ID.fullmatch(text) is not None


class ContactNotFound(NotFound):
    slug = "contact-not-found"
    title = "Unknown contact"


def _subscriptions_of(
    session: Session, contact_ids: Sequence[int], *, now: datetime
) -> dict[int, list[SubscriptionOut]]:
    found: dict[int, list[SubscriptionOut]] = defaultdict(list)
    if not contact_ids:
        return found
    rows = session.exec(
        select(Subscription, Topic.key, Topic.notice_key)
        .join(Topic, col(Topic.id) == col(Subscription.topic_id))
        .where(col(Subscription.contact_id).in_(contact_ids))
        .order_by(col(Topic.key))
    ).all()
    bound = {notice for _, _, notice in rows if notice is not None}
    rules = reconsent_by_notice(session, bound, now=now)
    for subscription, key, notice in rows:
        rule = rules.get(notice) if notice is not None else None
        status = Status(subscription.status)
        found[subscription.contact_id].append(
            SubscriptionOut(
                topic=key,
                status=status,
                since=subscription.since,
                reconsent_required=status is Status.SUBSCRIBED
                and rule is not None
                and rule.required(subscription.notice_version_id, subscription.occurred_at),
            )
        )
    return found


def _suppressions_of(session: Session, contact_ids: Sequence[int]) -> dict[int, Suppression]:
    if not contact_ids:
        return {}
    rows = session.exec(select(Suppression).where(col(Suppression.contact_id).in_(contact_ids)))
    return {row.contact_id: row for row in rows}


def lookup_contacts(
    session: Session, addresses: Sequence[Address], *, keys: AuditKeys, now: datetime
) -> LookupOut:
    """One entry per address asked for, in the order asked, echoing each as given. An erased
    address has no contact and is `suppressed`, even where a contact row came back for it."""
    erased = erased_among(session, keys, (a.normalised for a in addresses))
    contacts = {
        address: contact
        for address, contact in find_contacts(session, (a.normalised for a in addresses)).items()
        if address not in erased
    }
    ids = [c.id for c in contacts.values() if c.id is not None]
    subscriptions = _subscriptions_of(session, ids, now=now)
    suppressions = _suppressions_of(session, ids)
    bounced = bounced_among(session, ids)
    answers = []
    for address in addresses:
        contact = contacts.get(address.normalised)
        if contact is None or contact.id is None:
            answers.append(
                ContactLookup(
                    email=address.given,
                    contact_id=None,
                    suppressed=address.normalised in erased,
                    subscriptions=[],
                )
            )
            continue
        suppression = suppressions.get(contact.id)
        answers.append(
            ContactLookup(
                email=address.given,
                contact_id=contact.public_id,
                suppressed=bool(suppression and suppression.suppressed),
                subscriptions=subscriptions.get(contact.id, []),
                bounced=contact.id in bounced,
            )
        )
    return LookupOut(contacts=answers)


def read_contact(
    session: Session, public_id: str, *, with_evidence: bool, now: datetime
) -> ContactOut:
    """The contact, its state and its history; the events' evidence and request context only
    `with_evidence` (a reader of the audit trail)."""
    contact = find_contact_by_public_id(session, public_id) if is_public_id(public_id) else None
    if contact is None or contact.id is None:
        raise ContactNotFound(f"There is no contact {public_id!r}.")
    suppression = session.get(Suppression, contact.id)
    return ContactOut(
        contact_id=contact.public_id,
        email=contact.address_display,
        created_at=contact.created_at,
        erased_at=contact.erased_at,
        suppressed=bool(suppression and suppression.suppressed),
        suppression=SuppressionOut(
            suppressed=suppression.suppressed,
            since=suppression.since,
            source=suppression.source,
            by_recipient=suppression.by_recipient,
        )
        if suppression is not None
        else None,
        subscriptions=_subscriptions_of(session, [contact.id], now=now).get(contact.id, []),
        events=[
            ScopedAuditEventOut.of(event, with_evidence=with_evidence)
            for event in events_of_contact(session, contact.public_id)
        ],
        bounce=bounce_of(session, contact.id),
    )
