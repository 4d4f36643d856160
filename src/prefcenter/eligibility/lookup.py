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
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import ExitStack, closing
from datetime import UTC
from typing import Generic, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Connection
from sqlalchemy.pool import Pool, QueuePool

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.rules import Status
from prefcenter.driver import driver_cursor, postgres_cursor
from prefcenter.eligibility.rules import Eligibility, TopicModel, decide_eligibility
from prefcenter.notices.rules import Reconsent

# (suppressed, subscription status, bounced, re-consent required) as the query returns them;
# None where no row exists (re-consent: never None, false without a subscription).
State = tuple[bool | None, str | None, bool | None, bool]

# Addresses per SQLite query: each is a bound parameter, and SQLite allows 32,766 of them
# since 3.32 (999 before); one more parameter is the topic.
SQLITE_CHUNK = 10_000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 900

_POSTGRES_QUERY = (
    "SELECT c.address, p.suppressed, s.status, b.bounced, {reconsent} FROM contact c "
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
# With the above, for `read_answers`' statements (prepared): a generic plan, the same shape
# (the settings above fix it) planned once per connection, where a custom one is planned per
# call with the addresses written in, an estimate each (3-6 ms for 10,000 on 5M contacts).
_POSTGRES_GENERIC_PLAN = "; SET LOCAL plan_cache_mode = force_generic_plan"
_SQLITE_QUERY = (
    "SELECT c.address, p.suppressed, s.status, b.bounced, {reconsent} FROM contact c "
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
                    for reconsent in (False, True):
                        answer = decide_eligibility(
                            model,
                            # Erased contacts have no address, so no row of theirs is read.
                            erased=False,
                            suppressed=bool(suppressed),
                            subscription=status,
                            bounced=bool(bounced),
                            reconsent=reconsent,
                        )
                        value = None if status is None else status.value
                        self._by_state[(suppressed, value, bounced, reconsent)] = render(answer)
        # An address no contact has: no subscription, no suppression, no bounce.
        self.unknown: T = self._by_state[(None, None, None, False)]

    def __getitem__(self, state: State) -> T:
        """Fail safe: a status this code does not know (a newer version wrote it) is a
        KeyError that fails the request, never a guess."""
        return self._by_state[state]


def reconsent_sql(rule: Reconsent | None, *, postgres: bool) -> str:
    """`rule.required(s.notice_version_id, s.occurred_at)` as driver SQL (notices.reconsent
    .required_sql is its Core form), false without a subscription row; a constant false for
    a topic that asks for no re-consent, so the usual query does no more than before. The
    rule's values are written in: row ids (integers) and a time in the column's own text
    form, nothing a caller gave."""
    false = "FALSE" if postgres else "0"
    if rule is None:
        return false
    since_utc = rule.since.astimezone(UTC)
    since = (
        f"'{since_utc.isoformat()}'::timestamptz"
        if postgres
        # How SQLAlchemy stores a DateTime in SQLite (UtcDateTime: UTC, no zone).
        else f"'{since_utc.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    )

    def among(ids: frozenset[int]) -> str:
        listed = ",".join(str(int(i)) for i in sorted(ids))
        return f"COALESCE(s.notice_version_id IN ({listed}), {false})" if ids else false

    return (
        f"COALESCE(NOT {among(rule.standing)} AND ({among(rule.older)} "
        f"OR s.occurred_at < {since}), {false})"
    )


def read_states(
    connection: Connection,
    topic_id: int,
    addresses: Collection[str],
    table: StateTable[T],
    reconsent: Reconsent | None = None,
) -> dict[str, T]:
    """The answer for each of `addresses` (normalised, distinct) that a contact has; addresses
    absent from the result are unknown (`table.unknown`). `reconsent`: what the topic's notice
    asks for now (eligibility.service.TopicRef)."""
    if not addresses:
        return {}
    if connection.dialect.name == "postgresql":
        query = _POSTGRES_QUERY.format(reconsent=reconsent_sql(reconsent, postgres=True))
        with closing(driver_cursor(connection)) as cursor:
            cursor.execute(_POSTGRES_PLAN)
            cursor.execute(query, (topic_id, "\n".join(addresses)))
            rows = cursor.fetchall()
        return {
            address: table[(suppressed, status, bounced, stale)]
            for address, suppressed, status, bounced, stale in rows
        }
    found: dict[str, T] = {}
    stale_sql = reconsent_sql(reconsent, postgres=False)
    for chunk in _chunks(list(addresses), SQLITE_CHUNK):
        marks = ",".join("?" * len(chunk))
        with closing(driver_cursor(connection)) as cursor:
            cursor.execute(
                _SQLITE_QUERY.format(reconsent=stale_sql, marks=marks), (topic_id, *chunk)
            )
            for address, suppressed, status, bounced, stale in cursor:
                # SQLite stores booleans as 0/1.
                found[address] = table[
                    (
                        None if suppressed is None else bool(suppressed),
                        status,
                        None if bounced is None else bool(bounced),
                        bool(stale),
                    )
                ]
    return found


def read_erased(connection: Connection, keys: AuditKeys, addresses: Collection[str]) -> set[str]:
    """Which of these normalised addresses were erased: the question of
    consent.erased.erased_among, asked in one query per chunk at driver level."""
    if not addresses:
        return set()
    by_hash = keys.address_hashes(addresses)
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


def read_answers(
    connection: Connection,
    topic_id: int,
    chunks: Iterable[Collection[str]],
    table: StateTable[T],
    reconsent: Reconsent | None,
    *,
    keys: AuditKeys,
    erased: T,
) -> Iterator[dict[str, T]]:
    """For each chunk of normalised addresses, in order: the answer of each that a contact has
    (`read_states`), or `erased` for each that was erased (`read_erased`); addresses absent
    from it are unknown.

    PostgreSQL: the chunks' queries go down a pipeline, one chunk's in flight at a time, so
    that the database reads a chunk while the caller prepares the next one (`chunks` may be
    lazy) and uses the previous one, rather than the two taking turns. From the first chunk of
    `SPLIT_AT` addresses on, when the pool can spare one (`_spare_connection`), each chunk is
    split in two halves read at once on the caller's connection and on a second one: the
    database's share of a call runs on one core per connection. Each of the two reads what
    was committed when its statement began, as each statement of the caller's (READ
    COMMITTED) transaction does, so what was committed before the call is seen by both."""
    if connection.dialect.name != "postgresql":
        for addresses in chunks:
            found = read_states(connection, topic_id, addresses, table, reconsent)
            for address in read_erased(connection, keys, addresses):
                found[address] = erased
            yield found
        return
    query = _POSTGRES_QUERY.format(reconsent=reconsent_sql(reconsent, postgres=True))
    with ExitStack() as stack:
        first = _Pipeline(stack, connection, query, topic_id, keys)
        second: _Pipeline | None = None
        tried = False
        pending: list[tuple[_Pipeline, dict[str, str]]] = []
        for addresses in chunks:
            answered = _receive(pending, table, erased)
            if second is None and not tried and len(addresses) >= SPLIT_AT:
                tried = True
                spare = _spare_connection(stack, connection)
                if spare is not None:
                    second = _Pipeline(stack, spare, query, topic_id, keys)
            if second is None:
                pending = [(first, first.send(addresses))]
            else:
                listed = list(addresses)
                half = len(listed) // 2
                pending = [
                    (first, first.send(listed[:half])),
                    (second, second.send(listed[half:])),
                ]
            if answered is not None:
                yield answered
        answered = _receive(pending, table, erased)
        if answered is not None:
            yield answered


class _Pipeline:
    """One connection's part of `read_answers`: its two cursors in pipeline mode, for the
    block of `stack`, with the plan settings of this transaction set first."""

    def __init__(
        self, stack: ExitStack, connection: Connection, query: str, topic_id: int, keys: AuditKeys
    ) -> None:
        self._states = stack.enter_context(closing(postgres_cursor(connection)))
        self._erasures = stack.enter_context(closing(postgres_cursor(connection)))
        self._query = query
        self._topic_id = topic_id
        self._keys = keys
        self._states.execute(_POSTGRES_PLAN + _POSTGRES_GENERIC_PLAN)
        stack.enter_context(self._states.connection.pipeline())

    def send(self, addresses: Collection[str]) -> dict[str, str]:
        """Send the chunk's two queries; the addresses by keyed hash."""
        if not addresses:
            return {}
        self._states.execute(self._query, (self._topic_id, "\n".join(addresses)), prepare=True)
        # Hashed while the database reads the states.
        by_hash = self._keys.address_hashes(addresses)
        self._erasures.execute(_POSTGRES_ERASED, ("\n".join(by_hash),), prepare=True)
        return by_hash

    def receive(self, by_hash: dict[str, str], table: StateTable[T], erased: T) -> dict[str, T]:
        if not by_hash:
            return {}
        found = {
            address: table[(suppressed, status, bounced, stale)]
            for address, suppressed, status, bounced, stale in self._states.fetchall()
        }
        for (address_hash,) in self._erasures.fetchall():
            found[by_hash[address_hash]] = erased
        return found


def _receive(
    pending: list[tuple[_Pipeline, dict[str, str]]], table: StateTable[T], erased: T
) -> dict[str, T] | None:
    """The answers of the chunk in flight (its halves are disjoint), or None without one."""
    if not pending:
        return None
    found: dict[str, T] = {}
    for pipeline, by_hash in pending:
        found.update(pipeline.receive(by_hash, table, erased))
    return found


# Addresses of a chunk from which `read_answers` splits it over two connections: below, the
# second connection's statements cost more than the halving saves.
SPLIT_AT = 2_000

_spares_lock = threading.Lock()
_spares: WeakKeyDictionary[Pool, threading.BoundedSemaphore] = WeakKeyDictionary()


def _spare_connection(stack: ExitStack, connection: Connection) -> Connection | None:
    """A second connection from the pool of `connection`'s engine, in a transaction of its
    own, for the block of `stack` (back to the pool, rolled back, when it ends); or None when
    the pool cannot spare one.

    A pool of `n` plus `n` overflow (engines.make_engine) serves at most `n` request
    transactions at once (db.Database's session slots), the rest being for short lookups
    outside them. At most `n // 2` second connections are out at once, taken without waiting
    when one is free (else None): a call that finds none reads on its own connection alone,
    so calls that hold every slot never wait on each other, and `n // 2` connections stay
    for the lookups."""
    pool = connection.engine.pool
    if not isinstance(pool, QueuePool):
        return None
    with _spares_lock:
        spares = _spares.get(pool)
        if spares is None:
            spares = _spares[pool] = threading.BoundedSemaphore(pool.size() // 2)
    if not spares.acquire(blocking=False):
        return None
    stack.callback(spares.release)
    return stack.enter_context(connection.engine.connect())


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
