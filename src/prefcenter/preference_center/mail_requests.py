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
