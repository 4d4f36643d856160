"""Owns the import's statements on the ledger, set-based and engine-specific: stage a batch's
addresses, create the missing contacts (never an erased address: the check is in the insert's
own SQL), lock the contacts and read their state as every writer reads it (ledger.state). The
decided subscriptions are written by ledger.bulk_subscriptions.

PostgreSQL fills TEMP tables with `COPY`, SQLite with `executemany`; everything after that is
one statement per step, whatever the batch size. Each address comes with its keyed hash,
computed once by the caller: the erased check joins on it, and the events carry it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, bindparam, text
from sqlmodel import Session

from prefcenter.consent.ledger.sql import postgres_session
from prefcenter.consent.ledger.state import stored_subscription_state, stored_suppression_state
from prefcenter.consent.rules import CurrentState
from prefcenter.db import Database, UtcDateTime
from prefcenter.driver import postgres_cursor

# Any fixed number: held by each import batch until it commits, so that two imports never
# interleave their contact locks (API writers lock one contact at a time and cannot
# deadlock against a batch that locks in contact id order); or by an import that runs two
# batches at once, for its whole run (`import_lock`).
_IMPORT_LOCK_ID = 0x696D7074  # "impt"


@contextmanager
def import_lock(database: Database) -> Iterator[None]:
    """Hold the import lock (PostgreSQL) on a connection of its own until the block ends, for
    an import whose batches run on other connections and do not take it themselves: another
    import's batches wait until this import is done. The connection is in autocommit, so
    holding the lock holds no snapshot.

    The wait is not bounded by `PREFCENTER_DB_LOCK_TIMEOUT_S`: that bound is for a request
    behind a row lock, while an import waits for a whole other import (minutes), as its
    batches used to wait for the other's batches in turn. Only this connection waits so."""
    with database.engine.connect() as pooled:
        connection = pooled.execution_options(isolation_level="AUTOCOMMIT")
        try:
            connection.execute(text("SET lock_timeout = 0"))
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _IMPORT_LOCK_ID})
            # Back to the session's own setting (its connection options) for the pool.
            connection.execute(text("RESET lock_timeout"))
        except BaseException:
            connection.invalidate()
            raise
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _IMPORT_LOCK_ID})
            except BaseException:
                # A pooled connection must not go back still holding the lock.
                connection.invalidate()
                raise


@dataclass(frozen=True, slots=True)
class StagedAddress:
    address: str  # normalised
    given: str  # as the file wrote it (the new contact's display form)
    address_hash: str  # AuditKeys.address_hash(address)
    public_id: str  # the new contact's public id, should it be created


@dataclass(frozen=True, slots=True)
class StoredContact:
    """A contact as a batch decides on it: its state as ledger.state reads it."""

    id: int
    public_id: str
    erased: bool
    subscription: CurrentState | None  # to the batch's topic
    suppression: CurrentState | None  # the contact-wide marketing opt-out


@dataclass(frozen=True, slots=True)
class StagedBatch:
    erased: frozenset[str]  # normalised addresses that were erased: nothing was created
    contacts: dict[str, StoredContact]  # by normalised address, for the others that exist


def stage_batch(
    session: Session,
    addresses: Sequence[StagedAddress],
    *,
    topic_id: int,
    write: bool,
    now: datetime,
    import_locked: bool = False,
) -> StagedBatch:
    """The batch's erased addresses, and its other addresses' contacts with their state;
    with `write`, the missing contacts are created and all are locked until the transaction
    ends (a dry run writes nothing). `import_locked`: the import holds the import lock for
    its whole run (`import_lock`), so the batch does not take it."""
    postgres = postgres_session(session)
    if postgres:
        # Until the batch ends. Its statements each take a fraction of a second: compiling
        # them would cost more than it saves (the states read's estimate crosses
        # `jit_above_cost` at a few thousand contacts, and compiling it took 30–50 ms a batch).
        session.execute(text("SET LOCAL jit = off"))
    _stage(session, addresses, postgres=postgres)
    erased = frozenset(session.execute(_ERASED).scalars())
    if write and postgres:
        if not import_locked:
            session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _IMPORT_LOCK_ID})
        return _lock_or_create(session, addresses, topic_id=topic_id, now=now)
    if write:
        session.execute(_CREATE_CONTACTS, {"now": now})
    contacts = _read_states(session, topic_id=topic_id, postgres=postgres)
    if not postgres:
        session.execute(text("DROP TABLE IF EXISTS temp.import_address"))
    return StagedBatch(erased=erased, contacts=contacts)


def _lock_or_create(
    session: Session,
    addresses: Sequence[StagedAddress],
    *,
    topic_id: int,
    now: datetime,
) -> StagedBatch:
    """PostgreSQL: lock the staged addresses' contacts and create the missing ones in one
    statement (each address looked up once), then read the state of those that existed.

    The state is read by a statement of its own, after every lock is held: a statement that
    waited for a lock still reads with the snapshot it took before waiting, which misses the
    opt-out the lock's holder has just committed (tests/imports/test_concurrency.py). The
    contacts made here have no state and no other writer sees them yet.

    An address that another writer created after the statement's snapshot is neither found
    nor created (its insert does nothing): the statement runs again for it.

    An erasure committed while the statement waited for a lock (or since the batch's erased
    addresses were first read) takes the address out of its contact, and the statement's
    erased check did not see it: the erased addresses are read again once every lock is held,
    and a contact just made for one of them goes again before anyone could see it
    (tests/imports/test_concurrency.py)."""
    staged_addresses = {staged.address for staged in addresses}
    contacts: dict[str, StoredContact] = {}
    existing: dict[int, str] = {}  # the address of each contact that existed, by id
    for _ in range(_LOCK_ATTEMPTS):
        for row_id, public_id, address, erased_at, created in session.execute(
            _LOCK_OR_CREATE_PG, {"now": now}
        ):
            contacts[address] = StoredContact(
                row_id, public_id, erased=erased_at is not None, subscription=None, suppression=None
            )
            if not created:
                existing[row_id] = address
        erased = frozenset(session.execute(_ERASED).scalars())
        if staged_addresses - erased <= contacts.keys():
            break
    else:
        raise RuntimeError("contacts that other writers created could not be locked")
    made_for_erased = [
        address for address in erased & contacts.keys() if contacts[address].id not in existing
    ]
    if made_for_erased:
        session.execute(
            _DELETE_CONTACTS, {"ids": [contacts.pop(address).id for address in made_for_erased]}
        )
    if existing:
        states = session.execute(
            _READ_STATES_BY_ID_PG, {"topic_id": topic_id, "ids": sorted(existing)}
        )
        for (
            row_id,
            status,
            s_occurred_at,
            s_by_recipient,
            suppressed,
            p_occurred_at,
            p_by,
        ) in states:
            address = existing[row_id]
            contacts[address] = replace(
                contacts[address],
                subscription=stored_subscription_state(status, s_occurred_at, s_by_recipient),
                suppression=stored_suppression_state(suppressed, p_occurred_at, p_by),
            )
    return StagedBatch(erased=erased, contacts=contacts)


def copy_rows(
    session: Session, statement: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Binary `COPY … FROM STDIN` of rows of these PostgreSQL types, on the session's own
    connection (inside its transaction): no text to format in Python nor to parse on the
    server."""
    with (
        closing(postgres_cursor(session.connection())) as cursor,
        cursor.copy(f"{statement} FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


_STAGED_COLUMNS = "address, display, address_hash, public_id"


def _stage(session: Session, addresses: Sequence[StagedAddress], *, postgres: bool) -> None:
    """Each distinct address of the batch in a TEMP table the next statements join against."""
    rows = [(a.address, a.given, a.address_hash, a.public_id) for a in addresses]
    if postgres:
        session.execute(
            text(
                "CREATE TEMP TABLE import_address (address text PRIMARY KEY, display text, "
                "address_hash text, public_id text) ON COMMIT DROP"
            )
        )
        # Not analysed (ANALYZE was 3 % of an import's server CPU): the planner's estimate from
        # the table's size alone keeps to index lookups of the contacts, whose address is
        # unique (EXPLAIN at 5M contacts, 10k staged; the states are looked up by key anyway).
        copy_rows(session, f"COPY import_address ({_STAGED_COLUMNS})", ["text"] * 4, rows)
        return
    session.execute(text("DROP TABLE IF EXISTS temp.import_address"))
    session.execute(
        text(
            "CREATE TEMP TABLE import_address (address TEXT PRIMARY KEY, display TEXT, "
            "address_hash TEXT, public_id TEXT)"
        )
    )
    if rows:
        session.connection().exec_driver_sql(
            f"INSERT INTO temp.import_address ({_STAGED_COLUMNS}) VALUES (?, ?, ?, ?)",  # noqa: S608
            rows,
        )


_ERASED = text(
    "SELECT a.address FROM import_address a "
    "JOIN erased_address e ON e.address_hash = a.address_hash"
)
# In address order: two writers inserting the same new addresses meet them in one order. The
# erased check is part of the insert: an erased address is never stored again, even for the
# instant before a rollback (as consent.contact_creation's single form).
_CREATE_CONTACTS = text(
    "INSERT INTO contact (public_id, address, address_display, created_at) "
    "SELECT a.public_id, a.address, a.display, :now FROM import_address a "
    "WHERE NOT EXISTS (SELECT 1 FROM erased_address e WHERE e.address_hash = a.address_hash) "
    "ORDER BY a.address ON CONFLICT (address) DO NOTHING"
).bindparams(bindparam("now", type_=UtcDateTime()))

# A staged address's contact locked (in id order) if it exists, created if not (in address
# order, unless erased), each address looked up once: one row per contact, which says whether
# it was created. An address another writer created since the statement's snapshot is in
# neither part (`_lock_or_create` runs it again).
_LOCK_OR_CREATE_PG = (
    text(
        "WITH found AS (SELECT c.id, c.public_id, c.address, c.erased_at FROM import_address a "
        "JOIN contact c ON c.address = a.address ORDER BY c.id FOR UPDATE OF c), "
        "created AS (INSERT INTO contact (public_id, address, address_display, created_at) "
        "SELECT a.public_id, a.address, a.display, :now FROM import_address a "
        "WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.address = a.address) "
        "AND NOT EXISTS (SELECT 1 FROM erased_address e WHERE e.address_hash = a.address_hash) "
        "ORDER BY a.address ON CONFLICT (address) DO NOTHING RETURNING id, public_id, address) "
        "SELECT id, public_id, address, erased_at, false AS created FROM found "
        "UNION ALL SELECT id, public_id, address, NULL, true FROM created"
    )
    .bindparams(bindparam("now", type_=UtcDateTime()))
    .columns(
        id=Integer(),
        public_id=String(),
        address=String(),
        erased_at=UtcDateTime(),
        created=Boolean(),
    )
)
# Contacts this transaction made (for addresses erased meanwhile): no other writer saw them.
_DELETE_CONTACTS = text("DELETE FROM contact WHERE id = ANY(CAST(:ids AS integer[]))")
# Three runs are two writers creating the batch's addresses between them: not a race but a
# fault.
_LOCK_ATTEMPTS = 3
# The subscription to the topic and the contact-wide opt-out of each contact (ids in order),
# looked up by their keys: only the contacts that have either.
_READ_STATES_BY_ID_PG = text(
    "SELECT u.id, s.status, s.occurred_at AS s_occurred_at, s.by_recipient AS s_by_recipient, "
    "p.suppressed, p.occurred_at AS p_occurred_at, p.by_recipient AS p_by_recipient "
    "FROM unnest(CAST(:ids AS integer[])) AS u (id) "
    "LEFT JOIN LATERAL (SELECT status, occurred_at, by_recipient FROM subscription "
    "WHERE contact_id = u.id AND topic_id = :topic_id LIMIT 1) s ON true "
    "LEFT JOIN LATERAL (SELECT suppressed, occurred_at, by_recipient FROM suppression "
    "WHERE contact_id = u.id LIMIT 1) p ON true "
    "WHERE s.status IS NOT NULL OR p.suppressed IS NOT NULL"
).columns(
    id=Integer(),
    status=String(),
    s_occurred_at=UtcDateTime(),
    s_by_recipient=Boolean(),
    suppressed=Boolean(),
    p_occurred_at=UtcDateTime(),
    p_by_recipient=Boolean(),
)

_STATE_SELECT = (
    "SELECT c.id, c.public_id, c.address, c.erased_at, "
    "s.status, s.occurred_at AS s_occurred_at, s.by_recipient AS s_by_recipient, "
    "p.suppressed, p.occurred_at AS p_occurred_at, p.by_recipient AS p_by_recipient "
    "FROM import_address a JOIN contact c ON c.address = a.address "
)
_READ_STATES = (
    _STATE_SELECT + "LEFT JOIN subscription s ON s.contact_id = c.id AND s.topic_id = :topic_id "
    "LEFT JOIN suppression p ON p.contact_id = c.id "
    "ORDER BY c.id"
)
# Each contact's subscription and opt-out looked up by their keys, whatever the planner
# believes of the tables' sizes: with stale statistics (or none, without autovacuum) it
# otherwise joins by reading the whole subscription table, once a batch. Each key holds at
# most one row.
_READ_STATES_PG = (
    _STATE_SELECT  # noqa: S608  (this module's constants)
    + "LEFT JOIN LATERAL (SELECT status, occurred_at, by_recipient FROM subscription "
    "WHERE contact_id = c.id AND topic_id = :topic_id LIMIT 1) s ON true "
    "LEFT JOIN LATERAL (SELECT suppressed, occurred_at, by_recipient FROM suppression "
    "WHERE contact_id = c.id LIMIT 1) p ON true "
    "ORDER BY c.id"
)
_STATE_COLUMNS: dict[str, Any] = {
    "id": Integer(),
    "public_id": String(),
    "address": String(),
    "erased_at": UtcDateTime(),
    "status": String(),
    "s_occurred_at": UtcDateTime(),
    "s_by_recipient": Boolean(),
    "suppressed": Boolean(),
    "p_occurred_at": UtcDateTime(),
    "p_by_recipient": Boolean(),
}


def _read_states(session: Session, *, topic_id: int, postgres: bool) -> dict[str, StoredContact]:
    """The staged addresses' contacts with their subscription to the topic and their
    contact-wide opt-out, in one query (SQLite's write transaction already excludes every
    other writer; a dry run on PostgreSQL locks nothing)."""
    statement = _READ_STATES_PG if postgres else _READ_STATES
    query = text(statement).columns(**_STATE_COLUMNS)
    found: dict[str, StoredContact] = {}
    for (
        row_id,
        public_id,
        address,
        erased_at,
        status,
        s_occurred_at,
        s_by_recipient,
        suppressed,
        p_occurred_at,
        p_by_recipient,
    ) in session.execute(query, {"topic_id": topic_id}):
        found[address] = StoredContact(
            id=row_id,
            public_id=public_id,
            erased=erased_at is not None,
            subscription=stored_subscription_state(status, s_occurred_at, s_by_recipient),
            suppression=stored_suppression_state(suppressed, p_occurred_at, p_by_recipient),
        )
    return found
