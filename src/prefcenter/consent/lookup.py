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

from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import CALLER_COLUMNS, CALLER_MATCH, caller_of_row, granted_pg
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.queries import lookup_contacts
from prefcenter.consent.rules import Status
from prefcenter.contacts.addresses import Address
from prefcenter.db import Database
from prefcenter.driver import DriverCursor
from prefcenter.notices.reconsent import reconsent_by_notice
from prefcenter.notices.rules import Reconsent
from prefcenter.storage_errors import ConnectionLost

# One statement whatever the number of addresses; a row per (address, subscription). Many
# addresses come as two text parameters, one per line, split by the server (normalised
# addresses and hex hashes never contain a line break). One address comes as a row of its
# own: psycopg prepares a statement at its fifth execution on a connection, and PostgreSQL
# keeps its generic plan only if that looks no dearer than planning each time; an unnest of
# a parameter is estimated at 10 rows, so the generic plan would look ten times dearer and
# each lookup of one address would be planned anew (0.5-1.6 ms for 0.06 ms of execution).
_ADDRESSES = {
    True: "(VALUES (%(addresses)s::text, %(hashes)s::text)) AS w(address, hash)",
    False: "unnest(string_to_array(%(addresses)s, E'\\n'), string_to_array(%(hashes)s, "
    "E'\\n')) AS w(address, hash)",
}


def _lookup_rows(addresses: str) -> str:
    return f"""SELECT w.address, e.address_hash IS NOT NULL, c.public_id, p.suppressed,
    b.contact_id IS NOT NULL, t.key, s.status, s.since, t.notice_key, s.notice_version_id,
    s.occurred_at
FROM {addresses}
LEFT JOIN erased_address e ON e.address_hash = w.hash
LEFT JOIN contact c ON c.address = w.address AND e.address_hash IS NULL
LEFT JOIN suppression p ON p.contact_id = c.id
LEFT JOIN bounce b ON b.contact_id = c.id AND b.bounced
LEFT JOIN subscription s ON s.contact_id = c.id
LEFT JOIN topic t ON t.id = s.topic_id"""  # noqa: S608  (constants; every value a parameter)


# Keyed by "one address?".
_LOOKUP_PG = {one: f"{_lookup_rows(rows)}\nORDER BY t.key" for one, rows in _ADDRESSES.items()}
# The same with the caller's API key in one round trip (consent.lookup_lane): the key's
# columns first, then the rows, read only for a key that allows `consent:read` (otherwise one
# row of the key, or of NULLs: the app refuses the request its ordinary way). `OFFSET 0` keeps
# the subquery from being merged into the join: its condition on the key is then checked once,
# before any of its tables is read (a refused caller costs one index probe, as in the route).
CALLER_AND_LOOKUP_PG = {
    one: f"""SELECT {", ".join(CALLER_COLUMNS)}, l.*
FROM (SELECT 1) AS one
LEFT JOIN api_key AS k ON {CALLER_MATCH}
LEFT JOIN LATERAL (
    {_lookup_rows(rows)}
    WHERE {granted_pg(Scope.CONSENT_READ)}
    OFFSET 0
) AS l ON true
ORDER BY l.key"""  # noqa: S608  (built from constants; every value is a parameter)
    for one, rows in _ADDRESSES.items()
}
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
    try:
        one, parameters = lookup_parameters(addresses, keys)
        rows = await database.run_on_connection(
            lambda cursor: cursor.execute(_LOOKUP_PG[one], parameters).fetchall()
        )
    except ConnectionLost:
        # A dead pooled connection: the session path drops every pooled connection and
        # retries once on a fresh one.
        return await database.run_in_transaction(read, write=False)
    return await answer_of_rows(database, addresses, rows, now=now)


def lookup_parameters(addresses: Sequence[Address], keys: AuditKeys) -> tuple[bool, dict[str, str]]:
    """Whether one address is asked for (the statement's key), and the parameters."""
    wanted = sorted({a.normalised for a in addresses})
    return len(wanted) == 1, {
        "addresses": "\n".join(wanted),
        "hashes": "\n".join(keys.address_hash(a) for a in wanted),
    }


def read_caller_and_rows(
    cursor: DriverCursor, addresses: Sequence[Address], *, secret_hash: str, keys: AuditKeys
) -> tuple[Caller | None, list[tuple[Any, ...]] | None]:
    """PostgreSQL, one statement: the caller whose bearer secret hashes to `secret_hash` (None:
    unknown or revoked), and the lookup's rows (for `answer_of_rows`), or None when the
    caller may not read them (they were not read)."""
    one, parameters = lookup_parameters(addresses, keys)
    cursor.execute(CALLER_AND_LOOKUP_PG[one], {"secret_hash": secret_hash, **parameters})
    rows = cursor.fetchall()
    at = len(CALLER_COLUMNS)
    caller = caller_of_row(*rows[0][:at])
    if caller is None or rows[0][at] is None:
        return caller, None
    return caller, [row[at:] for row in rows]


async def answer_of_rows(
    database: Database, addresses: Sequence[Address], rows: list[tuple[Any, ...]], *, now: datetime
) -> bytes:
    """The answer from the statement's rows, subscriptions in topic order."""
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
