"""Owns the recipient's unsubscribe (page or RFC 8058 one-click) and what every recipient page
shares: reading the token, its contact and topic, the record of a recipient's change. The
preference center's choices are `choices`'s; confirming is `confirmation`'s. The token is the
only credential."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from prefcenter.audit.context import RequestContext
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.contacts.models import Contact
from prefcenter.contacts.service import (
    find_contact_by_public_id,
    lock_contact_by_public_id,
    mask_address,
)
from prefcenter.preference_center.errors import InvalidLink
from prefcenter.preference_center.schemas import LinkView
from prefcenter.settings import SigningKey
from prefcenter.tokens import (
    RetiredKey,
    TokenError,
    TokenPurpose,
    VerifiedToken,
    verify_token,
)
from prefcenter.topics.models import Topic
from prefcenter.topics.service import find_topic

RECIPIENT_ACTOR = "recipient"


class Channel(StrEnum):
    """How the person acted; recorded as the audit event's source. All are the person's own."""

    ONE_CLICK = "one_click"
    UNSUBSCRIBE_PAGE = "unsubscribe_page"
    PREFERENCE_CENTER = "preference_center"
    CONFIRMATION = "confirmation"
    MAILTO = "mailto"  # a message to the `mailto:` of List-Unsubscribe (inbound.mailto)


def read_token(
    ring: tuple[SigningKey, ...],
    token: str,
    purpose: TokenPurpose,
    *,
    now: datetime,
    max_age: timedelta | None = None,
    retired: frozenset[str] = frozenset(),
) -> VerifiedToken:
    """Checked before any database work: a bad token costs one HMAC. A link signed with a
    retired key gets the "expired" page, any other refused one the "does not work" page."""
    try:
        return verify_token(ring, purpose, token, now=now, max_age=max_age, retired=retired)
    except RetiredKey as exc:
        raise InvalidLink(400, retired=True) from exc
    except TokenError as exc:
        raise InvalidLink(400, expired=purpose is TokenPurpose.CONFIRM) from exc


def token_contact(session: Session, verified: VerifiedToken, *, lock: bool) -> Contact:
    public_id = verified.claims.contact_id
    contact = (
        lock_contact_by_public_id(session, public_id)
        if lock
        else find_contact_by_public_id(session, public_id)
    )
    if contact is None or contact.erased_at is not None or contact.address is None:
        raise InvalidLink(404)
    return contact


def token_topic(session: Session, verified: VerifiedToken) -> Topic | None:
    """The token's topic; a topic that no longer exists falls back to all marketing (when in
    doubt, suppress more)."""
    if verified.claims.topic is None:
        return None
    return find_topic(session, verified.claims.topic)


def recipient_record(
    verified: VerifiedToken, channel: Channel, request: RequestContext
) -> ChangeRecord:
    """Who acted and the proof of it, as every recipient change records it."""
    evidence: dict[str, Any] = {
        "channel": channel.value,
        "token_kid": verified.kid,
        "token_topic": verified.claims.topic,
        "token_issued_at": verified.claims.issued_at.isoformat(),
        **request.as_evidence(),
    }
    return ChangeRecord(
        actor=RECIPIENT_ACTOR,
        source=channel.value,
        campaign_id=verified.claims.campaign_id,
        evidence=evidence,
    )


def recipient_change(status: Status, channel: Channel, now: datetime) -> RequestedChange:
    """The person's own change, made now."""
    return RequestedChange(
        status=status, occurred_at=now, actor=ActorKind.RECIPIENT, source=channel.value
    )


def unsubscribe_view(session: Session, verified: VerifiedToken) -> LinkView:
    contact = token_contact(session, verified, lock=False)
    topic = token_topic(session, verified)
    assert contact.address is not None
    return LinkView(
        masked_address=mask_address(contact.address), topic_name=topic.name if topic else None
    )


def unsubscribe(
    session: Session,
    verified: VerifiedToken,
    *,
    channel: Channel,
    request: RequestContext,
    now: datetime,
    evidence: Mapping[str, Any] | None = None,
) -> LinkView:
    """Opt out of the token's topic, or of all marketing. Repeating it changes nothing more.

    The topic comes from the token only: nothing in the request can widen or redirect it.
    `evidence` adds to what the record keeps (a mailto: message's `Message-ID`).
    """
    topic = token_topic(session, verified)
    contact = token_contact(session, verified, lock=True)
    record = recipient_record(verified, channel, request)
    if evidence:
        record = replace(record, evidence={**record.evidence, **evidence})
    apply_change(
        session,
        contact=contact,
        topic=topic,
        requested=recipient_change(Status.UNSUBSCRIBED, channel, now),
        record=record,
        now=now,
    )
    assert contact.address is not None
    return LinkView(
        masked_address=mask_address(contact.address), topic_name=topic.name if topic else None
    )
