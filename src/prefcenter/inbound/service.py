"""Use cases of events coming in: record what the ESPs report, many events at once, in one
transaction: each event once (receipts), for contacts that exist (none is created), with its
audit event.

Set-based per delivery: one statement (PostgreSQL) claims the receipts and finds and locks the
contacts of the new ones, none erased, with their bounce rows (inbound.intake); the bounces are
decided in order and written by one upsert (bounces.service), and the opt-outs go through
consent.ledger.orm.apply_change on contacts and suppressions read in one query; the audit
events are appended together at commit, and webhook announcements are queued only when an
endpoint wants them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Integer
from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.rules import BounceKind
from prefcenter.bounces.schemas import BouncedContact, BounceReport
from prefcenter.bounces.service import RecordedBounce, record_bounces, soft_bounce_policy
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.ledger.sql import among, postgres_session
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.models import Contact
from prefcenter.inbound.events import Action, InboundEvent, normalised_address
from prefcenter.inbound.intake import FoundContact, take_in
from prefcenter.inbound.schemas import InboundReport
from prefcenter.settings import Settings
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind
from prefcenter.webhooks.queue import queue_contact_bounced, queue_contact_complained

logger = logging.getLogger(__name__)

COMPLAINT_SOURCE = "complaint"
ESP_UNSUBSCRIBE_SOURCE = "esp_unsubscribe"
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


def _preload_states(
    session: Session, contact_ids: list[int], topic_ids: list[int]
) -> dict[int, Contact]:
    """The contacts the opt-outs are for (locked already, by inbound.intake) and the
    suppressions and subscriptions they decide on, read into the session in one query (two
    with topics), where apply_change finds them without a query of its own."""
    postgres = postgres_session(session)
    contacts: dict[int, Contact] = {}
    rows = session.exec(
        select(Contact, Suppression)
        .outerjoin(Suppression, col(Suppression.contact_id) == col(Contact.id))
        .where(among(col(Contact.id), contact_ids, Integer(), postgres=postgres))
    )
    for contact, _ in rows:
        assert contact.id is not None
        contacts[contact.id] = contact
    if topic_ids:
        list(
            session.exec(
                select(Subscription).where(
                    among(col(Subscription.contact_id), contact_ids, Integer(), postgres=postgres),
                    among(col(Subscription.topic_id), topic_ids, Integer(), postgres=postgres),
                )
            )
        )
    return contacts


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
    addressed = [(e, normalised_address(e.address)) for e in actionable]
    intake = take_in(session, keys, addressed, now=now)
    fresh: list[tuple[InboundEvent, str | None]] = []
    seen: set[tuple[str, str | None, Action]] = set()
    for event, address in addressed:
        # One SNS message names many recipients under one receipt; an event twice in the
        # same delivery counts once.
        once = (event.receipt_key, event.address, event.action)
        if event.receipt_key in intake.claimed and once not in seen:
            seen.add(once)
            fresh.append((event, address))
    report.duplicates = len(actionable) - len(fresh)
    known: list[tuple[InboundEvent, FoundContact]] = []
    for event, address in fresh:
        contact = intake.contacts.get(address) if address is not None else None
        if contact is None:
            report.unknown_addresses += 1
        else:
            known.append((event, contact))
    report.recorded = len(known)
    announcements = _record_bounces(session, known, settings=settings, now=now)
    announcements += _record_opt_outs(session, known, now=now)
    queue_webhook_announcements(
        session, [a for a in announcements if a.type in intake.announced], now=now
    )
    return report


def _bounced_contact(contact: FoundContact) -> BouncedContact:
    return BouncedContact(id=contact.id, public_id=contact.public_id, address=contact.address)


def _record_bounces(
    session: Session,
    known: list[tuple[InboundEvent, FoundContact]],
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
        session,
        reports,
        policy=soft_bounce_policy(settings),
        now=now,
        stored={c.id: c.bounce for _, c in known if c.bounce is not None},
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
    session: Session, known: list[tuple[InboundEvent, FoundContact]], *, now: datetime
) -> list[Announcement]:
    """Complaints (all marketing, source `complaint`) and ESP unsubscribes (the mapped topics,
    or all marketing; source `esp_unsubscribe`): the person's own opt-outs, which an API
    client cannot undo. A mapped topic that is gone, or not marketing, falls back to all
    marketing (when in doubt, suppress more)."""
    opt_outs = [(e, c) for e, c in known if e.action in (Action.COMPLAINT, Action.UNSUBSCRIBE)]
    if not opt_outs:
        return []
    topics = _marketing_topics(session, {t for e, _ in opt_outs for t in e.topics or ()})
    contacts = _preload_states(
        session,
        sorted({c.id for _, c in opt_outs}),
        sorted(t.id for t in topics.values() if t.id is not None),
    )
    announcements: list[Announcement] = []
    for event, found in opt_outs:
        contact = contacts[found.id]
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
