"""Use cases for links: issue the signed unsubscribe and preference links for outgoing mail."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import new_public_id
from prefcenter.db import utcnow
from prefcenter.links.errors import BatchTooLarge
from prefcenter.links.schemas import MAX_BATCH, LinkRequest, LinkSet, ListHeaders
from prefcenter.links.tokens import TokenClaims, TokenPurpose, sign_token
from prefcenter.settings import Settings, SigningKey
from prefcenter.topics.errors import UnknownTopic
from prefcenter.topics.models import Topic

ONE_CLICK = "List-Unsubscribe=One-Click"
# Inserting and selecting contacts in chunks keeps every statement under SQLite's limit on
# bound parameters.
_CHUNK = 2000


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.base_url}/u/{token}"


def preferences_url(settings: Settings, token: str) -> str:
    return f"{settings.base_url}/p/{token}"


def confirm_url(settings: Settings, token: str) -> str:
    return f"{settings.base_url}/c/{token}"


def list_headers(settings: Settings, token: str) -> ListHeaders:
    """`List-Unsubscribe` with our HTTPS link first (the one RFC 8058 clients POST to) and the
    optional mailto: second; the token in its subject lets an inbox handler act on it."""
    value = f"<{unsubscribe_url(settings, token)}>"
    if settings.unsubscribe_mailto:
        subject = quote(f"unsubscribe {token}", safe="")
        value += f", <mailto:{settings.unsubscribe_mailto}?subject={subject}>"
    return ListHeaders(list_unsubscribe=value, list_unsubscribe_post=ONE_CLICK)


def ensure_contacts(session: Session, requests: Sequence[LinkRequest]) -> dict[str, str]:
    """Public ids by normalised address; unknown addresses get a contact (and nothing else:
    having a link implies no subscription). Set-based: one insert and one select per chunk."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    given: dict[str, str] = {}
    for request in requests:
        given.setdefault(request.email.normalised, request.email.given)
    addresses = sorted(given)
    public_ids: dict[str, str] = {}
    created_at = utcnow()
    for start in range(0, len(addresses), _CHUNK):
        chunk = addresses[start : start + _CHUNK]
        rows = session.exec(
            select(Contact.address, Contact.public_id).where(col(Contact.address).in_(chunk))
        ).all()
        public_ids.update({address: public_id for address, public_id in rows if address})
        missing = [a for a in chunk if a not in public_ids]
        if missing:
            new_rows = [
                {
                    "public_id": new_public_id(),
                    "address": a,
                    "address_display": given[a],
                    "created_at": created_at,
                }
                for a in missing
            ]
            session.execute(
                insert(Contact).on_conflict_do_nothing(index_elements=["address"]), new_rows
            )
            rows = session.exec(
                select(Contact.address, Contact.public_id).where(col(Contact.address).in_(missing))
            ).all()
            public_ids.update({address: public_id for address, public_id in rows if address})
    return public_ids


def manage_token(
    ring: tuple[SigningKey, ...],
    *,
    contact_id: str,
    campaign_id: str | None,
    now: datetime,
    topic: str | None = None,
) -> str:
    """The reusable token behind a contact's unsubscribe and preference links."""
    return sign_token(
        ring,
        TokenPurpose.MANAGE,
        TokenClaims(contact_id=contact_id, topic=topic, campaign_id=campaign_id, issued_at=now),
    )


def issue_links(
    session: Session,
    requests: Sequence[LinkRequest],
    *,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    now: datetime,
    field_prefix: str = "items[",
) -> list[LinkSet]:
    """One signed, reusable token per recipient, used by both its unsubscribe and its
    preference link. Answers in request order. Errors name `items[i].…` fields, or plain
    fields when `field_prefix` is empty (the single-link call)."""
    if len(requests) > MAX_BATCH:
        raise BatchTooLarge(
            f"A batch holds at most {MAX_BATCH:,} items; this one has {len(requests):,}. "
            "Split the send into several batches."
        )
    wanted_topics = {r.topic for r in requests if r.topic is not None}
    if wanted_topics:
        known = set(session.exec(select(Topic.key).where(col(Topic.key).in_(wanted_topics))))
        unknown = [i for i, r in enumerate(requests) if r.topic and r.topic not in known]
        if unknown:
            raise UnknownTopic(
                f"Unknown topic {requests[unknown[0]].topic!r}; create it with "
                "PUT /v1/topics/{key} first.",
                errors=[
                    {
                        "field": f"{field_prefix}{i}].topic" if field_prefix else "topic",
                        "detail": "unknown topic",
                    }
                    for i in unknown[:50]
                ],
            )
    public_ids = ensure_contacts(session, requests)
    links = []
    for request in requests:
        contact_id = public_ids[request.email.normalised]
        token = manage_token(
            ring,
            contact_id=contact_id,
            campaign_id=request.campaign_id,
            now=now,
            topic=request.topic,
        )
        links.append(
            LinkSet(
                email=request.email.given,
                contact_id=contact_id,
                topic=request.topic,
                unsubscribe_url=unsubscribe_url(settings, token),
                preferences_url=preferences_url(settings, token),
                headers=list_headers(settings, token),
            )
        )
    return links
