"""Use cases of events coming in: record what the ESPs report, many events at once, in one
transaction: each event once (receipts), for contacts that exist (none is created), with its
audit event.

Set-based per delivery: one statement claims the receipts, one query finds and locks the
contacts (in id order), one the erased among them; the bounces are written together
(bounces.service), and the opt-outs through consent.ledger.orm.apply_change on states read in
one query each; the audit events are appended together at commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.rules import BounceKind
from prefcenter.bounces.schemas import BouncedContact, BounceReport
from prefcenter.bounces.service import RecordedBounce, record_bounces, soft_bounce_policy
from prefcenter.consent.erased import erased_among
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.models import Contact
from prefcenter.inbound.events import Action, InboundEvent, normalised_address
from prefcenter.inbound.receipts import claim_receipts
from prefcenter.inbound.schemas import InboundReport
from prefcenter.settings import Settings
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.webhooks.queue import queue_contact_bounced, queue_contact_complained

logger = logging.getLogger(__name__)

COMPLAINT_SOURCE = "complaint"
ESP_UNSUBSCRIBE_SOURCE = "esp_unsubscribe"
_CONTACT_CHUNK = 900  # addresses per query: SQLite binds each as a parameter
_BOUNCE_KINDS = {Action.HARD_BOUNCE: BounceKind.HARD, Action.SOFT_BOUNCE: BounceKind.SOFT}


@dataclass(frozen=True, slots=True)
class Announcement:
    """What outgoing webhooks will announce of a delivery: `contact.bounced` when an address
    became bounced, `contact.complained` for a complaint."""

    type: Literal["contact.bounced", "contact.complained"]
    contact_id: str
    event_id: str
    occurred_at: datetime


def queue_webhook_announcements(
    session: Session, announcements: Sequence[Announcement], *, now: datetime
) -> None:
    """`contact.bounced` and `contact.complained` for the outgoing webhooks, queued in this
    transaction (to the endpoints that want them; nothing when none does)."""
    for announcement in announcements:
        queue = (
            queue_contact_bounced
            if announcement.type == "contact.bounced"
            else queue_contact_complained
        )
        queue(session, event_id=announcement.event_id, contact_id=announcement.contact_id, now=now)


def _lock_contacts(session: Session, addresses: set[str]) -> dict[str, Contact]:
    """The contacts with these addresses, locked in id order until the transaction ends
    (PostgreSQL; SQLite's writer excludes every other). None is created."""
    postgres = session.get_bind().dialect.name == "postgresql"
    found: dict[str, Contact] = {}
    ordered = sorted(addresses)
    for start in range(0, len(ordered), _CONTACT_CHUNK):
        query = (
            select(Contact)
            .where(col(Contact.address).in_(ordered[start : start + _CONTACT_CHUNK]))
            .order_by(col(Contact.id))
        )
        if postgres:
            query = query.with_for_update()
        for contact in session.exec(query.execution_options(populate_existing=True)):
            if contact.address is not None and contact.erased_at is None:
                found[contact.address] = contact
    return found


def _preload_states(session: Session, contact_ids: list[int], topic_ids: list[int]) -> None:
    """Read the suppressions and subscriptions the opt-outs decide on, one query each, into
    the session, where apply_change finds them without a query of its own."""
    if not contact_ids:
        return
    list(session.exec(select(Suppression).where(col(Suppression.contact_id).in_(contact_ids))))
    if topic_ids:
        list(
            session.exec(
                select(Subscription).where(
                    col(Subscription.contact_id).in_(contact_ids),
                    col(Subscription.topic_id).in_(topic_ids),
                )
            )
        )


def _marketing_topics(session: Session, keys: set[str]) -> dict[str, Topic]:
    if not keys:
        return {}
    rows = session.exec(
        select(Topic).where(col(Topic.key).in_(sorted(keys)), Topic.kind == TopicKind.MARKETING)
    )
    return {topic.key: topic for topic in rows}


def record_events(
    session: Session,
    events: Sequence[InboundEvent],
    *,
    settings: Settings,
    keys: AuditKeys,
    now: datetime,
) -> InboundReport:
    """Record a delivery's events in order, in the caller's transaction, and say what became
    of them. An event whose receipt was claimed before changes nothing; an address no contact
    has, or an erased one, stores nothing."""
    actionable = [e for e in events if e.action is not Action.IGNORED]
    report = InboundReport(
        events=len(events),
        recorded=0,
        duplicates=0,
        ignored=len(events) - len(actionable),
        unknown_addresses=0,
    )
    if not actionable:
        return report
    claimed = claim_receipts(
        session, {e.receipt_key: e.provider.value for e in actionable}, now=now
    )
    fresh: list[InboundEvent] = []
    seen: set[tuple[str, str | None, Action]] = set()
    for event in actionable:
        # One SNS message names many recipients under one receipt; an event twice in the
        # same delivery counts once.
        once = (event.receipt_key, event.address, event.action)
        if event.receipt_key in claimed and once not in seen:
            seen.add(once)
            fresh.append(event)
    report.duplicates = len(actionable) - len(fresh)
    addressed = [(e, normalised_address(e.address)) for e in fresh]
    contacts = _lock_contacts(session, {a for _, a in addressed if a is not None})
    erased = erased_among(session, keys, contacts)
    known: list[tuple[InboundEvent, Contact]] = []
    for event, address in addressed:
        contact = contacts.get(address) if address is not None else None
        if contact is None or address in erased:
            report.unknown_addresses += 1
        else:
            known.append((event, contact))
    report.recorded = len(known)
    announcements = _record_bounces(session, known, settings=settings, now=now)
    announcements += _record_opt_outs(session, known, now=now)
    queue_webhook_announcements(session, announcements, now=now)
    return report


def _bounced_contact(contact: Contact) -> BouncedContact:
    assert contact.id is not None
    assert contact.address is not None
    return BouncedContact(id=contact.id, public_id=contact.public_id, address=contact.address)


def _record_bounces(
    session: Session,
    known: list[tuple[InboundEvent, Contact]],
    *,
    settings: Settings,
    now: datetime,
) -> list[Announcement]:
    reports = [
        BounceReport(
            contact=_bounced_contact(contact),
            kind=_BOUNCE_KINDS[event.action],
            occurred_at=event.occurred_at,
            actor=f"esp:{event.provider.value}",
            source=event.provider.value,
            evidence=event.evidence,
        )
        for event, contact in known
        if event.action in _BOUNCE_KINDS
    ]
    if not reports:
        return []
    recorded: list[RecordedBounce] = record_bounces(
        session, reports, policy=soft_bounce_policy(settings), now=now
    )
    return [
        Announcement(
            type="contact.bounced",
            contact_id=r.report.contact.public_id,
            event_id=r.event_id,
            occurred_at=r.decision.occurred_at,
        )
        for r in recorded
        if r.decision.became_bounced
    ]


def _record_opt_outs(
    session: Session, known: list[tuple[InboundEvent, Contact]], *, now: datetime
) -> list[Announcement]:
    """Complaints (all marketing, source `complaint`) and ESP unsubscribes (the mapped topics,
    or all marketing; source `esp_unsubscribe`): the person's own opt-outs, which an API
    client cannot undo. A mapped topic that is gone, or not marketing, falls back to all
    marketing (when in doubt, suppress more)."""
    opt_outs = [(e, c) for e, c in known if e.action in (Action.COMPLAINT, Action.UNSUBSCRIBE)]
    if not opt_outs:
        return []
    topics = _marketing_topics(session, {t for e, _ in opt_outs for t in e.topics or ()})
    _preload_states(
        session,
        sorted({c.id for _, c in opt_outs if c.id is not None}),
        sorted(t.id for t in topics.values() if t.id is not None),
    )
    announcements: list[Announcement] = []
    for event, contact in opt_outs:
        complaint = event.action is Action.COMPLAINT
        source = COMPLAINT_SOURCE if complaint else ESP_UNSUBSCRIBE_SOURCE
        targets: list[Topic | None] = (
            [topics[k] for k in event.topics or () if k in topics] if not complaint else []
        )
        if not targets or (event.topics and len(targets) < len(event.topics)):
            targets = [None]
        for topic in targets:
            applied = apply_change(
                session,
                contact=contact,
                topic=topic,
                requested=RequestedChange(
                    status=Status.UNSUBSCRIBED,
                    occurred_at=event.occurred_at,
                    actor=ActorKind.RECIPIENT,
                    source=source,
                ),
                record=ChangeRecord(
                    actor=f"esp:{event.provider.value}",
                    source=source,
                    evidence=event.evidence,
                    context={"channel": "esp_webhook"},
                ),
                now=now,
            )
            if complaint:
                announcements.append(
                    Announcement(
                        type="contact.complained",
                        contact_id=contact.public_id,
                        event_id=applied.event_id,
                        occurred_at=applied.decision.occurred_at,
                    )
                )
    return announcements
