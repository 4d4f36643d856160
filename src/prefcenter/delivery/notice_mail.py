"""Owns what a notice mail says, read when it is sent: the version (its summary, date and
link), for a merger or acquisition the person's current choices, and for a material version
of a notice topics are bound to, the subscriptions it asks the person to give again (with the
preference link, where a tick gives one again: no token of its own can subscribe anyone)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Status
from prefcenter.contacts.models import Contact
from prefcenter.mail.schemas import MailPayload, MailTemplate
from prefcenter.notices.models import Notice, NoticeVersion
from prefcenter.notices.rules import split_ref
from prefcenter.notices.schemas import NoticeKind
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import TopicKind


@dataclass(frozen=True, slots=True)
class NoticeFacts:
    key: str
    material: bool
    name: str
    kind: NoticeKind
    version: str
    summary: str
    url: str | None
    effective_date: str  # YYYY-MM-DD, UTC


@dataclass(frozen=True, slots=True)
class Choices:
    """A contact's marketing topics with their state, and the contact-wide opt-out."""

    topics: list[tuple[str, str]]  # (topic name, status)
    all_marketing_off: bool


def notices_of(session: Session, payloads: Sequence[MailPayload | None]) -> dict[str, NoticeFacts]:
    """The versions the batch's notice mails name, by `<key>@<version>` (a batch is mostly
    one run: a query per version named)."""
    found: dict[str, NoticeFacts] = {}
    for ref in {p.notice for p in payloads if p is not None and p.notice}:
        key, label = split_ref(ref)
        row = session.exec(
            select(Notice, NoticeVersion)
            .join(NoticeVersion, col(NoticeVersion.notice_id) == col(Notice.id))
            .where(col(Notice.key) == key, col(NoticeVersion.version) == label)
        ).first()
        if row is not None:
            notice, version = row
            found[ref] = NoticeFacts(
                key=notice.key,
                material=version.material,
                name=notice.name,
                kind=NoticeKind(notice.kind),
                version=version.version,
                summary=version.summary,
                url=version.url,
                effective_date=version.effective_at.strftime("%Y-%m-%d"),
            )
    return found


def choices_of(
    session: Session,
    payloads: Sequence[MailPayload | None],
    contacts: dict[str, Contact],
    notices: dict[str, NoticeFacts],
) -> dict[int, Choices]:
    """The choices of each contact whose mail is an ownership change notice (two queries for
    the batch)."""
    ids = [
        contact.id
        for p in payloads
        if p is not None
        and p.template is MailTemplate.NOTICE
        and (facts := notices.get(p.notice or "")) is not None
        and facts.kind is NoticeKind.OWNERSHIP_CHANGE
        and (contact := contacts.get(p.contact_id or "")) is not None
        and contact.id is not None
    ]
    if not ids:
        return {}
    topics: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
    for subscription, topic in session.exec(
        select(Subscription, Topic)
        .join(Topic, col(Topic.id) == col(Subscription.topic_id))
        .where(
            col(Subscription.contact_id).in_(ids),
            col(Topic.kind) != TopicKind.TRANSACTIONAL.value,
        )
        .order_by(col(Topic.name))
    ):
        topics[subscription.contact_id].append((topic.name, subscription.status))
    off = set(
        session.exec(
            select(Suppression.contact_id).where(
                col(Suppression.contact_id).in_(ids), col(Suppression.suppressed)
            )
        )
    )
    return {i: Choices(topics=topics[i], all_marketing_off=i in off) for i in ids}


def asked_again(
    session: Session,
    payloads: Sequence[MailPayload | None],
    contacts: dict[str, Contact],
    notices: dict[str, NoticeFacts],
) -> dict[tuple[int, str], list[str]]:
    """By (contact row id, notice key): the names of the topics bound to a material notice
    version's notice that the contact is subscribed to (one query for the batch). They will
    need the person's consent again once the version takes effect, whatever version they
    were given under: the mail cannot know whether the person re-consents before then."""
    wanted: dict[str, set[int]] = {}
    for p in payloads:
        if p is None or p.template is not MailTemplate.NOTICE:
            continue
        facts = notices.get(p.notice or "")
        contact = contacts.get(p.contact_id or "")
        if facts is None or not facts.material or contact is None or contact.id is None:
            continue
        wanted.setdefault(facts.key, set()).add(contact.id)
    if not wanted:
        return {}
    ids = sorted({i for found in wanted.values() for i in found})
    asked: dict[tuple[int, str], list[str]] = {}
    for contact_id, name, key in session.exec(
        select(col(Subscription.contact_id), col(Topic.name), col(Topic.notice_key))
        .join(Topic, col(Topic.id) == col(Subscription.topic_id))
        .where(
            col(Subscription.contact_id).in_(ids),
            col(Subscription.status) == Status.SUBSCRIBED.value,
            col(Topic.notice_key).in_(sorted(wanted)),
        )
        .order_by(col(Topic.name))
    ):
        if key is not None and contact_id in wanted[key]:
            asked.setdefault((contact_id, key), []).append(name)
    return asked


def notice_context(
    facts: NoticeFacts, choices: Choices | None, asked: list[str] | None = None
) -> dict[str, Any]:
    return {
        "reconsent_topics": asked or [],
        "notice_name": facts.name,
        "notice_version": facts.version,
        "notice_summary": facts.summary,
        "notice_url": facts.url,
        "effective_date": facts.effective_date,
        "ownership_change": facts.kind is NoticeKind.OWNERSHIP_CHANGE,
        "choices": choices.topics if choices is not None else [],
        "all_marketing_off": choices.all_marketing_off if choices is not None else False,
    }
