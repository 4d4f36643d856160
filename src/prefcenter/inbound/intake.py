"""Owns the first step of recording a delivery: claim its receipts and, for the events whose
receipt is new, find and lock the contacts they name (none erased), with each one's bounce
row, and (PostgreSQL) whether any webhook endpoint wants what a delivery announces.

On PostgreSQL that is one statement (one round trip), whatever the delivery's size: the claim
is an `INSERT … ON CONFLICT DO NOTHING RETURNING` in a CTE, the contacts are joined to the
claimed receipts only (a delivery seen before locks nothing) and locked in id order, the
erased check is a `NOT EXISTS` on the addresses' keyed hashes, and every list is one array
parameter. SQLite (in-process, one writer) runs the same steps as separate queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from prefcenter.audit.keys import AuditKeys
from prefcenter.bounces.service import StoredBounce, stored_bounces
from prefcenter.consent.erased import erased_among
from prefcenter.contacts.models import Contact
from prefcenter.inbound.events import Action, InboundEvent
from prefcenter.inbound.receipts import claim_receipts
from prefcenter.webhooks.rules import EVERY_TYPE, EventType

_SQLITE_CHUNK = 900  # addresses per query: SQLite binds each as a parameter
# What a delivery may announce (inbound.service.Announcement).
ANNOUNCED = (EventType.CONTACT_BOUNCED, EventType.CONTACT_COMPLAINED)


@dataclass(frozen=True, slots=True)
class FoundContact:
    """A contact an event names, locked until the transaction ends."""

    id: int
    public_id: str
    address: str
    # Its `bounce` row; None if it has none (SQLite: read only for the bounces' contacts).
    bounce: StoredBounce | None


@dataclass(frozen=True, slots=True)
class Intake:
    claimed: set[str]  # the receipt keys that were new
    contacts: dict[str, FoundContact]  # by normalised address: those found and not erased
    # Of ANNOUNCED, the types some enabled endpoint may want (PostgreSQL: does want).
    announced: frozenset[EventType]


# Columns: part, text (receipt key, address or event type), id, public_id, then the bounce.
_INTAKE_PG = """
WITH claimed AS (
    INSERT INTO inbound_receipt (key, provider, received_at)
    SELECT key, provider, %(now)s
    FROM unnest(%(keys)s::text[], %(providers)s::text[]) AS given (key, provider)
    ORDER BY key
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), wanted AS (
    SELECT DISTINCT n.address, n.address_hash
    FROM unnest(%(addresses)s::text[], %(address_keys)s::text[], %(address_hashes)s::text[])
        AS n (address, key, address_hash)
    JOIN claimed ON claimed.key = n.key
), found AS (
    SELECT c.id, c.public_id, c.address, w.address_hash
    FROM contact AS c JOIN wanted AS w ON w.address = c.address
    WHERE c.erased_at IS NULL
    ORDER BY c.id
    FOR UPDATE OF c
)
SELECT 0, key, NULL::integer, NULL, NULL::boolean, NULL::timestamptz, NULL::timestamptz,
    NULL, NULL, NULL::timestamptz, NULL
FROM claimed
UNION ALL
SELECT 1, f.address, f.id, f.public_id, b.bounced, b.occurred_at, b.since, b.source,
    b.event_id, b.lifted_at, b.soft_bounces
FROM found AS f LEFT JOIN bounce AS b ON b.contact_id = f.id
WHERE NOT EXISTS (SELECT FROM erased_address AS e WHERE e.address_hash = f.address_hash)
UNION ALL
SELECT 2, t.type, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM unnest(%(types)s::text[]) AS t (type)
WHERE EXISTS (
    SELECT FROM webhook_endpoint_event AS s
    JOIN webhook_endpoint AS e ON e.id = s.endpoint_id AND e.enabled
    WHERE s.event_type IN (t.type, %(every)s)
)
"""


def take_in(
    session: Session,
    keys: AuditKeys,
    events: Sequence[tuple[InboundEvent, str | None]],
    *,
    now: datetime,
) -> Intake:
    """Claim the receipts of these events (each with its normalised address, or None) and
    find the contacts that the events with a new receipt name."""
    providers = {e.receipt_key: e.provider.value for e, _ in events}
    if session.get_bind().dialect.name != "postgresql":
        return _take_in_sqlite(session, keys, events, providers, now=now)
    addressed = [(e.receipt_key, a) for e, a in events if a is not None]
    hashes = {a: keys.address_hash(a) for _, a in addressed}
    ordered = sorted(providers)
    params: dict[str, Any] = {
        "now": now,
        "keys": ordered,
        "providers": [providers[k] for k in ordered],
        "addresses": [a for _, a in addressed],
        "address_keys": [k for k, _ in addressed],
        "address_hashes": [hashes[a] for _, a in addressed],
        "types": [t.value for t in ANNOUNCED],
        "every": EVERY_TYPE,
    }
    claimed: set[str] = set()
    contacts: dict[str, FoundContact] = {}
    announced: set[EventType] = set()
    for row in session.connection().exec_driver_sql(_INTAKE_PG, params):
        part, text = row[0], row[1]
        if part == 0:
            claimed.add(text)
        elif part == 1:
            bounce = None if row[4] is None else StoredBounce.from_driver_row(row[4:11])
            contacts[text] = FoundContact(id=row[2], public_id=row[3], address=text, bounce=bounce)
        else:
            announced.add(EventType(text))
    return Intake(claimed=claimed, contacts=contacts, announced=frozenset(announced))


def _take_in_sqlite(
    session: Session,
    keys: AuditKeys,
    events: Sequence[tuple[InboundEvent, str | None]],
    providers: dict[str, str],
    *,
    now: datetime,
) -> Intake:
    claimed = claim_receipts(session, providers, now=now)
    wanted = sorted({a for e, a in events if a is not None and e.receipt_key in claimed})
    rows: list[tuple[int, str, str]] = []
    for start in range(0, len(wanted), _SQLITE_CHUNK):
        query = select(col(Contact.id), col(Contact.public_id), col(Contact.address)).where(
            col(Contact.address).in_(wanted[start : start + _SQLITE_CHUNK]),
            col(Contact.erased_at).is_(None),
        )
        for cid, public_id, address in session.exec(query):
            assert cid is not None
            assert address is not None
            rows.append((cid, public_id, address))
    erased = erased_among(session, keys, [address for _, _, address in rows])
    rows = [r for r in rows if r[2] not in erased]
    bounced = {a for e, a in events if e.action in (Action.HARD_BOUNCE, Action.SOFT_BOUNCE)}
    bounces = stored_bounces(session, [cid for cid, _, address in rows if address in bounced])
    contacts = {
        address: FoundContact(id=cid, public_id=public_id, address=address, bounce=bounces.get(cid))
        for cid, public_id, address in rows
    }
    # Not asked here: queueing one writes nothing when no endpoint wants it, and costs no
    # round trip in-process.
    return Intake(claimed=claimed, contacts=contacts, announced=frozenset(ANNOUNCED))
