"""Owns the body of a `notice.recipient` delivery, written when it is sent: the version (what
changed, from when) and the recipient as they are then (an erased one gets nothing), with
their preference link, so that the team's own sender can write the mail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import format_time
from prefcenter.contacts.models import Contact
from prefcenter.notices.models import Notice, NoticeVersion
from prefcenter.notices.notification import mail_language
from prefcenter.notices.rules import split_ref
from prefcenter.outbox.schemas import Claimed
from prefcenter.settings import Settings
from prefcenter.tokens import TokenClaims, TokenPurpose, preferences_url, sign_token
from prefcenter.webhooks.rules import EventType


def is_recipient_delivery(item: Claimed) -> bool:
    return item.payload.get("type") == EventType.NOTICE_RECIPIENT.value


def recipient_bodies(
    session: Session, settings: Settings, claimed: Sequence[Claimed]
) -> dict[int, bytes | None]:
    """The body of each `notice.recipient` delivery by outbox row id; None for a recipient
    erased since (or a version gone): nothing to send. Two queries for the batch. The body
    is the same on every attempt: the link is issued as of the version's publication."""
    items = [c for c in claimed if is_recipient_delivery(c)]
    if not items:
        return {}
    refs = {str(c.payload.get("notice")) for c in items}
    versions: dict[str, tuple[Notice, NoticeVersion]] = {}
    for ref in refs:
        key, label = split_ref(ref)
        found = session.exec(
            select(Notice, NoticeVersion)
            .join(NoticeVersion, col(NoticeVersion.notice_id) == col(Notice.id))
            .where(col(Notice.key) == key, col(NoticeVersion.version) == label)
        ).first()
        if found is not None:
            versions[ref] = found
    ids = {str(c.payload.get("contact_id")) for c in items}
    contacts = {
        c.public_id: c for c in session.exec(select(Contact).where(col(Contact.public_id).in_(ids)))
    }
    ring = settings.signing_key_ring()
    bodies: dict[int, bytes | None] = {}
    for item in items:
        pair = versions.get(str(item.payload.get("notice")))
        contact = contacts.get(str(item.payload.get("contact_id")))
        if pair is None or contact is None or contact.address is None:
            bodies[item.id] = None
            continue
        notice, version = pair
        bodies[item.id] = orjson.dumps(
            {
                "type": EventType.NOTICE_RECIPIENT.value,
                "timestamp": format_time(version.published_at),
                "data": _data(settings, ring, notice, version, contact),
            }
        )
    return bodies


def _data(
    settings: Settings, ring: Any, notice: Notice, version: NoticeVersion, contact: Contact
) -> dict[str, Any]:
    language = mail_language(version.language)
    token = sign_token(
        ring,
        TokenPurpose.MANAGE,
        TokenClaims(
            contact_id=contact.public_id,
            topic=None,
            campaign_id=None,
            issued_at=version.published_at,
        ),
    )
    link = preferences_url(settings.base_url, token)
    return {
        "notice": f"{notice.key}@{version.version}",
        "kind": notice.kind,
        "name": notice.name,
        "language": version.language,
        "summary": version.summary,
        "url": version.url,
        "effective_at": format_time(version.effective_at),
        "contact_id": contact.public_id,
        "email": contact.address,
        "preferences_url": link if language == "en" else f"{link}?lang={language}",
    }
