"""Use cases for links: issue the signed unsubscribe and preference links for outgoing mail.

Each recipient gets two tokens: an UNSUBSCRIBE token behind the `List-Unsubscribe` header and
the unsubscribe URL (it can only ever unsubscribe), and a MANAGE token behind the preference
URL. Contacts are created through consent.contact_creation, so an erased address is never
stored again: it gets the `address-erased` problem instead of links.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from urllib.parse import quote

from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.contact_creation import create_contacts
from prefcenter.consent.erased import AddressErased
from prefcenter.links.errors import BatchTooLarge
from prefcenter.links.schemas import MAX_BATCH, LinkProblem, LinkRequest, LinkSet, ListHeaders
from prefcenter.settings import Settings, SigningKey
from prefcenter.tokens import (
    TokenClaims,
    TokenPurpose,
    preferences_url,
    sign_token,
    unsubscribe_url,
)
from prefcenter.topics.errors import UnknownTopic
from prefcenter.topics.models import Topic

ONE_CLICK = "List-Unsubscribe=One-Click"


def list_headers(settings: Settings, token: str) -> ListHeaders:
    """`List-Unsubscribe` with our HTTPS link first (the one RFC 8058 clients POST to) and the
    optional mailto: second; the token in its subject lets an inbox handler act on it."""
    value = f"<{unsubscribe_url(settings.base_url, token)}>"
    if settings.unsubscribe_mailto:
        subject = quote(f"unsubscribe {token}", safe="")
        value += f", <mailto:{settings.unsubscribe_mailto}?subject={subject}>"
    return ListHeaders(list_unsubscribe=value, list_unsubscribe_post=ONE_CLICK)


def recipient_token(
    ring: tuple[SigningKey, ...],
    purpose: TokenPurpose,
    *,
    contact_id: str,
    campaign_id: str | None,
    now: datetime,
    topic: str | None = None,
) -> str:
    """A reusable token for one of a contact's links (UNSUBSCRIBE or MANAGE)."""
    return sign_token(
        ring,
        purpose,
        TokenClaims(contact_id=contact_id, topic=topic, campaign_id=campaign_id, issued_at=now),
    )


def manage_token(
    ring: tuple[SigningKey, ...],
    *,
    contact_id: str,
    campaign_id: str | None,
    now: datetime,
    topic: str | None = None,
) -> str:
    """The reusable token behind a contact's preference link."""
    return recipient_token(
        ring,
        TokenPurpose.MANAGE,
        contact_id=contact_id,
        campaign_id=campaign_id,
        now=now,
        topic=topic,
    )


def erased_problem(field: str) -> AddressErased:
    return AddressErased(
        "This address was erased at the person's request and stays suppressed for good: "
        "no links are issued for it, and nothing was stored. Do not send to it.",
        errors=[{"field": field, "detail": "was erased"}],
    )


def issue_link(
    session: Session,
    request: LinkRequest,
    *,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
) -> LinkSet:
    """The links of one message; an erased address is the `address-erased` problem."""
    (links,) = issue_links(
        session, [request], settings=settings, ring=ring, keys=keys, now=now, field_prefix=""
    )
    assert isinstance(links, LinkSet)  # the single form raises instead of answering a problem
    return links


def issue_links(
    session: Session,
    requests: Sequence[LinkRequest],
    *,
    settings: Settings,
    ring: tuple[SigningKey, ...],
    keys: AuditKeys,
    now: datetime,
    field_prefix: str = "items[",
) -> list[LinkSet | LinkProblem]:
    """The links of each recipient, in request order. Errors name `items[i].…` fields, or
    plain fields when `field_prefix` is empty (the single-link call, which raises the
    `address-erased` problem where a batch answers it per item)."""
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
    given: dict[str, str] = {}
    for request in requests:
        given.setdefault(request.email.normalised, request.email.given)
    created = create_contacts(session, keys, given, now=now)
    links: list[LinkSet | LinkProblem] = []
    for index, request in enumerate(requests):
        if request.email.normalised in created.erased:
            if not field_prefix:
                raise erased_problem("email")
            links.append(
                LinkProblem(problem=erased_problem(f"{field_prefix}{index}].email").body())
            )
            continue
        contact_id = created.public_ids[request.email.normalised]
        unsubscribe, manage = (
            recipient_token(
                ring,
                purpose,
                contact_id=contact_id,
                campaign_id=request.campaign_id,
                now=now,
                topic=request.topic,
            )
            for purpose in (TokenPurpose.UNSUBSCRIBE, TokenPurpose.MANAGE)
        )
        links.append(
            LinkSet(
                email=request.email.given,
                contact_id=contact_id,
                topic=request.topic,
                unsubscribe_url=unsubscribe_url(settings.base_url, unsubscribe),
                preferences_url=preferences_url(settings.base_url, manage),
                headers=list_headers(settings, unsubscribe),
            )
        )
    return links
