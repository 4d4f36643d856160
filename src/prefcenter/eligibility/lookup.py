"""Owns reading the stored consent state of many addresses at once, and turning each state into
what the eligibility rule answers for it.

Set-based and driver-level: one query per chunk of thousands of addresses (contact LEFT JOIN the
topic's subscription LEFT JOIN suppression LEFT JOIN bounce), its rows read as plain tuples
from the DBAPI cursor — no ORM objects, no per-row type processing — because this is the hot
path of the stream (millions of addresses). The rule is not restated in SQL: `StateTable` asks
`decide_eligibility` once per state a contact can be in, so a row's answer is one dict lookup.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import closing
from typing import Generic, TypeVar

from sqlalchemy import Connection

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.rules import Status
from prefcenter.driver import driver_cursor
from prefcenter.eligibility.rules import Eligibility, TopicModel, decide_eligibility

# (suppressed, subscription status, bounced) as the query returns them; None where no row
# exists.
State = tuple[bool | None, str | None, bool | None]

# Addresses per SQLite query: each is a bound parameter, and SQLite allows 32,766 of them
# since 3.32 (999 before); one more parameter is the topic.
SQLITE_CHUNK = 10_000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 900

_POSTGRES_QUERY = (
    "SELECT c.address, p.suppressed, s.status, b.bounced FROM contact c "
    "LEFT JOIN subscription s ON s.contact_id = c.id AND s.topic_id = %s "
    "LEFT JOIN suppression p ON p.contact_id = c.id "
    "LEFT JOIN bounce b ON b.contact_id = c.id "
    # One text parameter, the addresses one per line, split by the server: the same statement
    # whatever the chunk's size, and no per-element work in the driver (its list dumper is
    # pure Python). Normalised addresses never contain a line break.
    "WHERE c.address = ANY(string_to_array(%s, E'\\n'))"
)
# For this transaction only. With thousands of keys the planner prices their index probes
# above reading whole tables (a parallel seq scan of `contact`, hash joins over `suppression`):
# measured on 5M contacts, 20,000 keys, that plan is several times slower than the probes and
# grows with the tables, not the chunk. Probes only, no parallel workers, no JIT compilation
# (which costs more than the query).
_POSTGRES_PLAN = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; "
    "SET LOCAL enable_mergejoin = off; SET LOCAL enable_bitmapscan = off; "
    "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off"
)
_SQLITE_QUERY = (
    "SELECT c.address, p.suppressed, s.status, b.bounced FROM contact c "
    "LEFT JOIN subscription s ON s.contact_id = c.id AND s.topic_id = ? "
    "LEFT JOIN suppression p ON p.contact_id = c.id "
    "LEFT JOIN bounce b ON b.contact_id = c.id "
    "WHERE c.address IN ({marks})"
)
_POSTGRES_ERASED = (
    "SELECT address_hash FROM erased_address WHERE address_hash = ANY(string_to_array(%s, E'\\n'))"
)
_SQLITE_ERASED = "SELECT address_hash FROM erased_address WHERE address_hash IN ({marks})"


T = TypeVar("T")


class StateTable(Generic[T]):
    """What to answer for each state a contact can be in, computed once per topic by the rule
    and stored as `T` (an `Eligibility`, or the CSV text the stream writes for it)."""

    def __init__(self, model: TopicModel, render: Callable[[Eligibility], T]) -> None:
        self._by_state: dict[State, T] = {}
        for suppressed in (None, False, True):
            for status in (None, *Status):
                for bounced in (None, False, True):
                    answer = decide_eligibility(
                        model,
                        # Erased contacts have no address, so no row of theirs is ever read.
                        erased=False,
                        suppressed=bool(suppressed),
                        subscription=status,
                        bounced=bool(bounced),
                    )
                    key = (suppressed, None if status is None else status.value, bounced)
                    self._by_state[key] = render(answer)
        # An address no contact has: no subscription, no suppression, no bounce.
        self.unknown: T = self._by_state[(None, None, None)]

    def __getitem__(self, state: State) -> T:
        """Fail safe: a status this code does not know (a newer version wrote it) is a
        KeyError that fails the request, never a guess."""
        return self._by_state[state]


def read_states(
    connection: Connection, topic_id: int, addresses: Collection[str], table: StateTable[T]
) -> dict[str, T]:
    """The answer for each of `addresses` (normalised, distinct) that a contact has; addresses
    absent from the result are unknown (`table.unknown`)."""
    if not addresses:
        return {}
    if connection.dialect.name == "postgresql":
        with closing(driver_cursor(connection)) as cursor:
            cursor.execute(_POSTGRES_PLAN)
            cursor.execute(_POSTGRES_QUERY, (topic_id, "\n".join(addresses)))
            rows = cursor.fetchall()
        return {
            address: table[(suppressed, status, bounced)]
            for address, suppressed, status, bounced in rows
        }
    found: dict[str, T] = {}
    for chunk in _chunks(list(addresses), SQLITE_CHUNK):
        marks = ",".join("?" * len(chunk))
        with closing(driver_cursor(connection)) as cursor:
            cursor.execute(_SQLITE_QUERY.format(marks=marks), (topic_id, *chunk))
            for address, suppressed, status, bounced in cursor:
                # SQLite stores booleans as 0/1.
                found[address] = table[
                    (
                        None if suppressed is None else bool(suppressed),
                        status,
                        None if bounced is None else bool(bounced),
                    )
                ]
    return found


def read_erased(connection: Connection, keys: AuditKeys, addresses: Collection[str]) -> set[str]:
    """Which of these normalised addresses were erased: the question of
    consent.erased.erased_among, asked in one query per chunk at driver level."""
    if not addresses:
        return set()
    by_hash = {keys.address_hash(address): address for address in addresses}
    found: list[str] = []
    if connection.dialect.name == "postgresql":
        with closing(driver_cursor(connection)) as cursor:
            cursor.execute(_POSTGRES_ERASED, ("\n".join(by_hash),))
            found = [row[0] for row in cursor.fetchall()]
    else:
        for chunk in _chunks(list(by_hash), SQLITE_CHUNK):
            marks = ",".join("?" * len(chunk))
            with closing(driver_cursor(connection)) as cursor:
                cursor.execute(_SQLITE_ERASED.format(marks=marks), chunk)
                found.extend(row[0] for row in cursor)
    return {by_hash[h] for h in found}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
