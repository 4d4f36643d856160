"""Owns answering `POST /v1/contacts/lookup`: on PostgreSQL in one statement on a pooled
connection, its rows read as driver tuples and written out as JSON directly (the hot read path
of CRMs and sign-up forms); on SQLite through consent.queries.

The answer is the `LookupOut` document consent.queries builds, field for field: one entry per
address asked for, in the order asked, echoing each as given; an erased address has no
contact and is `suppressed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlmodel import Session

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.queries import lookup_contacts
from prefcenter.consent.rules import Status
from prefcenter.contacts.addresses import Address
from prefcenter.db import Database
from prefcenter.notices.reconsent import reconsent_by_notice
from prefcenter.notices.rules import Reconsent
from prefcenter.storage_errors import ConnectionLost

# One statement whatever the number of addresses: the addresses and their keyed hashes as two
# text parameters, one per line, split by the server (normalised addresses and hex hashes
# never contain a line break); a row per (address, subscription).
_LOOKUP_PG = """SELECT w.address, e.address_hash IS NOT NULL, c.public_id, p.suppressed,
    b.contact_id IS NOT NULL, t.key, s.status, s.since, t.notice_key, s.notice_version_id,
    s.occurred_at
FROM unnest(string_to_array(%s, E'\\n'), string_to_array(%s, E'\\n')) AS w(address, hash)
LEFT JOIN erased_address e ON e.address_hash = w.hash
LEFT JOIN contact c ON c.address = w.address AND e.address_hash IS NULL
LEFT JOIN suppression p ON p.contact_id = c.id
LEFT JOIN bounce b ON b.contact_id = c.id AND b.bounced
LEFT JOIN subscription s ON s.contact_id = c.id
LEFT JOIN topic t ON t.id = s.topic_id
ORDER BY t.key"""
_VALID_STATUS = frozenset(s.value for s in Status)


async def lookup_json(
    database: Database, addresses: Sequence[Address], *, keys: AuditKeys, now: datetime
) -> bytes:
    """The lookup's answer as JSON bytes; `now`: the moment re-consent is decided at, taken
    as the request's handling starts."""

    def read(session: Session) -> bytes:
        return lookup_contacts(session, addresses, keys=keys, now=now).model_dump_json().encode()

    if database.settings.is_sqlite:
        return await database.run_in_transaction(read, write=False)
    wanted = sorted({a.normalised for a in addresses})
    hashes = [keys.address_hash(a) for a in wanted]
    try:
        rows = await database.run_on_connection(
            lambda cursor: cursor.execute(
                _LOOKUP_PG, ("\n".join(wanted), "\n".join(hashes))
            ).fetchall()
        )
    except ConnectionLost:
        # A dead pooled connection: the session path drops every pooled connection and
        # retries once on a fresh one.
        return await database.run_in_transaction(read, write=False)
    bound = {row[8] for row in rows if row[8] is not None}
    rules: dict[str, Reconsent] = {}
    if bound:
        # Only when a subscription is to a topic bound to a notice: one more short read.
        rules = await database.run_in_transaction(
            lambda session: reconsent_by_notice(session, bound, now=now), write=False
        )
    return render(addresses, rows, rules)


def render(
    addresses: Sequence[Address], rows: list[tuple[Any, ...]], rules: dict[str, Reconsent]
) -> bytes:
    """`LookupOut` from the statement's rows (subscriptions in topic order); `rules`: the
    re-consent each bound topic's notice asks for now."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        address, erased, public_id, suppressed, bounced, topic, status, since = row[:8]
        notice, version_id, occurred_at = row[8:]
        entry = found.get(address)
        if entry is None:
            entry = found[address] = {
                "contact_id": public_id,
                "suppressed": bool(erased or suppressed),
                "subscriptions": [],
                "bounced": bool(bounced),
            }
        if topic is not None:
            if status not in _VALID_STATUS:
                # A status this version does not know (a newer one wrote it): fail, never guess.
                raise ValueError(f"unknown subscription status {status!r}")
            rule = rules.get(notice) if notice is not None else None
            entry["subscriptions"].append(
                {
                    "topic": topic,
                    "status": status,
                    "since": _utc(since),
                    "reconsent_required": status == Status.SUBSCRIBED.value
                    and rule is not None
                    and rule.required(version_id, occurred_at),
                }
            )
    answers = []
    for address in addresses:
        entry = found[address.normalised]
        answers.append({"email": address.given, **entry})
    return orjson.dumps({"contacts": answers}, option=orjson.OPT_UTC_Z)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
