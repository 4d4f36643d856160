"""Owns the throttle on mail that a recipient page sends on request ("email me my link", a
resubscribe confirmation): without it, anyone could make the service mail any mailbox at will.

Counted per address (as its keyed hash: an address nobody knows is not stored in clear) and per
client network (an IPv4 address, an IPv6 /64), over the last hour, in the database, so the
limits hold across workers. On PostgreSQL the count and the record of one address or network
are serialised by a transaction-scoped advisory lock, so parallel requests cannot all pass one
count; SQLite's write transaction lets one writer in at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, text
from sqlmodel import Session, col, select

from prefcenter.audit.context import client_network
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.erased import is_erased_address
from prefcenter.contacts.addresses import Address
from prefcenter.contacts.service import find_contacts
from prefcenter.mail.config import MailConfig, new_message_id
from prefcenter.mail.schemas import MailLanguage, MailPayload, MailTemplate
from prefcenter.outbox.schemas import OutboxKind
from prefcenter.outbox.service import enqueue
from prefcenter.preference_center.models import MailRequest

WINDOW = timedelta(hours=1)
# A person asks for their link once, maybe twice; a mailbox flooded with our mail is abuse.
PER_ADDRESS = 3
# One office or household behind one address asks for a few people's links.
PER_NETWORK = 20
# Requests older than the window are deleted a batch at a time by later requests.
_PRUNE_BATCH = 500
# The first key of `pg_advisory_xact_lock(int, int)`: "mreq".
_LOCK_SPACE = 0x6D726571


@dataclass(frozen=True, slots=True)
class Throttled:
    """Too many requests: try again after `retry_after`."""

    retry_after: timedelta


def allow_mail_request(
    session: Session, *, address_hash: str, client_ip: str | None, now: datetime
) -> Throttled | None:
    """Count this request against its address and network and record it, or refuse it (None:
    allowed and recorded, in the caller's transaction)."""
    network = client_network(client_ip)
    if session.get_bind().dialect.name == "postgresql":
        for key in sorted({_lock_key("address", address_hash), _lock_key("network", network)}):
            session.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": _LOCK_SPACE, "key": key},
            )
    since = now - WINDOW
    by_address = _oldest_and_count(session, col(MailRequest.address_hash) == address_hash, since)
    by_network = (
        _oldest_and_count(session, col(MailRequest.network) == network, since)
        if network is not None
        else (None, 0)
    )
    waits = [
        oldest + WINDOW - now
        for (oldest, count), limit in ((by_address, PER_ADDRESS), (by_network, PER_NETWORK))
        if count >= limit and oldest is not None
    ]
    if waits:
        return Throttled(retry_after=max(*waits, timedelta(seconds=1)))
    session.add(MailRequest(address_hash=address_hash, network=network, requested_at=now))
    _prune(session, since)
    return None


def _oldest_and_count(
    session: Session, condition: object, since: datetime
) -> tuple[datetime | None, int]:
    oldest, count = session.exec(
        select(func.min(MailRequest.requested_at), func.count()).where(
            condition,  # type: ignore[arg-type]
            col(MailRequest.requested_at) > since,
        )
    ).one()
    return oldest, count


def _prune(session: Session, since: datetime) -> None:
    stale = (
        select(MailRequest.id)
        .where(col(MailRequest.requested_at) <= since)
        .order_by(col(MailRequest.requested_at))
        .limit(_PRUNE_BATCH)
    )
    session.execute(delete(MailRequest).where(col(MailRequest.id).in_(stale)))


def _lock_key(kind: str, value: str | None) -> int:
    digest = hashlib.sha256(f"{kind}\0{value or ''}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


def request_preferences_link(
    session: Session,
    mail: MailConfig,
    keys: AuditKeys,
    *,
    address: Address,
    client_ip: str | None,
    language: MailLanguage,
    now: datetime,
) -> Throttled | None:
    """`POST /p`: queue a mail with a preference link to a known, not erased contact. The
    answer is the same for any address (None), so the page reveals nothing about who is
    known; only the throttle shows, and it counts unknown addresses the same way."""
    refused = allow_mail_request(
        session, address_hash=keys.address_hash(address.normalised), client_ip=client_ip, now=now
    )
    if refused is not None:
        return refused
    contact = find_contacts(session, [address.normalised]).get(address.normalised)
    if contact is None or contact.erased_at is not None or contact.address is None:
        return None
    if is_erased_address(session, keys, address.normalised):
        return None  # a contact row that came back for an erased address gets nothing either
    payload = MailPayload(
        template=MailTemplate.PREFERENCES_LINK, language=language, contact_id=contact.public_id
    )
    enqueue(
        session,
        kind=OutboxKind.MAIL,
        message_id=new_message_id(mail),
        payload=payload.model_dump(mode="json", exclude_none=True),
        now=now,
    )
    return None
