"""Owns the rows a batch of consent changes reads and writes (consent.ledger.batch): its
contacts locked in id order, their subscriptions and contact-wide opt-outs read whole, kept as
the batch's decisions leave them, and written back set-based, one statement per table (on
PostgreSQL in pipeline mode, while the batch builds its events)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Integer, String, select
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, col

from prefcenter.consent.ledger.sql import among, array_parameter, postgres_session
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.contacts.models import Contact
from prefcenter.db import UtcDateTime
from prefcenter.driver import PostgresCursor, postgres_cursor, postgres_pipeline

_SUBSCRIPTION = Subscription.__table__  # type: ignore[attr-defined]
_SUPPRESSION = Suppression.__table__  # type: ignore[attr-defined]
_SUBSCRIPTION_KEY = ("contact_id", "topic_id")
_SUPPRESSION_KEY = ("contact_id",)


@dataclass(frozen=True, slots=True)
class LockedContact:
    id: int
    public_id: str
    address: str


@dataclass(slots=True)
class StoredRows:
    """The stored rows of one table for the batch's contacts, as the batch leaves them."""

    by_key: dict[tuple[Any, ...], dict[str, Any]]
    written: set[tuple[Any, ...]] = field(default_factory=set)

    def set(self, key: tuple[Any, ...], values: dict[str, Any]) -> dict[str, Any]:
        row = self.by_key[key] = {**self.by_key.get(key, {}), **values}
        self.written.add(key)
        return row


@contextmanager
def writing_rows(
    session: Session, subscriptions: StoredRows, suppressions: StoredRows
) -> Iterator[bool]:
    """Write the rows the batch changed, as it leaves them; on PostgreSQL sent in pipeline
    mode when the block starts and awaited when it ends, so the server writes them while the
    block runs. Yields whether the block runs in that pipeline (then a statement it sends
    on a cursor of its own is awaited with them)."""
    if not postgres_session(session):
        yield False
        _upsert_sqlite(session, _SUBSCRIPTION, _SUBSCRIPTION_KEY, subscriptions)
        _upsert_sqlite(session, _SUPPRESSION, _SUPPRESSION_KEY, suppressions)
        return
    if not subscriptions.written and not suppressions.written:
        yield False
        return
    connection = session.connection()
    with closing(postgres_cursor(connection)) as cursor, postgres_pipeline(connection):
        _upsert_pg(cursor, _SUBSCRIPTION, subscriptions)
        _upsert_pg(cursor, _SUPPRESSION, suppressions)
        yield True


@dataclass(frozen=True, slots=True)
class BatchRows:
    """A batch's contacts, locked, and their rows as stored."""

    contacts: dict[str, LockedContact]  # by normalised address
    subscriptions: StoredRows
    suppressions: StoredRows


class SentLock:
    """`lock_contacts` of a batch's addresses sent in the connection's pipeline (PostgreSQL),
    after the statement that inserts the contacts: the server inserts and locks while Python
    goes on. Once the pipeline is synced, `rows` reads the locked contacts and then their
    subscriptions and contact-wide opt-outs by id, as `read_subscriptions` and
    `read_suppressions` do, both in one round trip (pipeline mode).

    The reads wait for the lock's ids: naming the contacts by address in them instead (a
    sub-select) let the planner scan every subscription of the topic and every contact."""

    def __init__(self, cursor: PostgresCursor) -> None:
        self._cursor = cursor

    @classmethod
    def send(cls, connection: Any, addresses: list[str]) -> SentLock | None:
        """The lock sent (`connection`: SQLAlchemy's, in pipeline mode); None without
        addresses. Its cursor holds its result until `rows`."""
        if not addresses:
            return None
        cursor = postgres_cursor(connection)
        cursor.execute(_LOCK_PG, {"addresses": array_parameter(addresses)})
        return cls(cursor)

    def close(self) -> None:
        self._cursor.close()

    def rows(self, connection: Any, *, erased: frozenset[str], topic_ids: set[int]) -> BatchRows:
        """The locked contacts, once the pipeline is synced, and their rows; the contacts of
        `erased` addresses (which the insert left out) are not among them."""
        with closing(self._cursor) as lock:
            contacts = {
                address: LockedContact(id=row_id, public_id=public_id, address=address)
                for row_id, public_id, address in lock.fetchall()
                if address not in erased
            }
        ids = sorted(contact.id for contact in contacts.values())
        if not ids:
            return BatchRows(
                contacts=contacts, subscriptions=StoredRows({}), suppressions=StoredRows({})
            )
        given = {"ids": array_parameter(ids)}
        with (
            closing(postgres_cursor(connection)) as subscriptions,
            closing(postgres_cursor(connection)) as suppressions,
        ):
            with postgres_pipeline(connection):
                if topic_ids:
                    subscriptions.execute(
                        _READ_PG[_SUBSCRIPTION.name], {**given, "topics": sorted(topic_ids)}
                    )
                suppressions.execute(_READ_PG[_SUPPRESSION.name], given)
            return BatchRows(
                contacts=contacts,
                subscriptions=StoredRows(
                    _rows_of(subscriptions, _SUBSCRIPTION, _SUBSCRIPTION_KEY) if topic_ids else {}
                ),
                suppressions=StoredRows(_rows_of(suppressions, _SUPPRESSION, _SUPPRESSION_KEY)),
            )


def _rows_of(
    cursor: PostgresCursor, table: Any, key: tuple[str, ...]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """A read's rows by their key, as `_read` gives them (times in UTC, as `UtcDateTime`
    reads them back)."""
    names = [c.name for c in table.columns]
    times = [c.name for c in table.columns if isinstance(c.type, UtcDateTime)]
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        for name in times:
            time: datetime | None = row[name]
            if time is not None:
                row[name] = time.astimezone(UTC)
        rows[tuple(row[k] for k in key)] = row
    return rows


# `lock_contacts`, `read_subscriptions` and `read_suppressions` on the driver: the same
# statements, each array as one parameter (sql.array_parameter), cast as `among` casts it.
_LOCK_PG = (
    "SELECT id, public_id, address FROM contact "
    "WHERE address = ANY(CAST(%(addresses)s AS VARCHAR[])) AND erased_at IS NULL "
    "ORDER BY id FOR UPDATE"
)
_READ_PG = {
    _SUBSCRIPTION.name: (
        f"SELECT {', '.join(c.name for c in _SUBSCRIPTION.columns)} "  # noqa: S608  (the model's names)
        "FROM subscription WHERE contact_id = ANY(CAST(%(ids)s AS INTEGER[])) "
        "AND topic_id = ANY(%(topics)s)"
    ),
    _SUPPRESSION.name: (
        f"SELECT {', '.join(c.name for c in _SUPPRESSION.columns)} "  # noqa: S608  (the model's names)
        "FROM suppression WHERE contact_id = ANY(CAST(%(ids)s AS INTEGER[]))"
    ),
}


def lock_contacts(session: Session, addresses: list[str]) -> dict[str, LockedContact]:
    """The contacts of these addresses, locked in id order until the transaction ends
    (PostgreSQL; SQLite's write transaction already excludes other writers)."""
    if not addresses:
        return {}
    postgres = postgres_session(session)
    query = (
        select(col(Contact.id), col(Contact.public_id), col(Contact.address))
        .where(
            among(col(Contact.address), addresses, String(), postgres=postgres),
            col(Contact.erased_at).is_(None),
        )
        .order_by(col(Contact.id))
    )
    if postgres:
        query = query.with_for_update()
    return {
        address: LockedContact(id=row_id, public_id=public_id, address=address)
        for row_id, public_id, address in session.execute(query)
    }


def read_subscriptions(session: Session, contact_ids: list[int], topic_ids: set[int]) -> StoredRows:
    """The subscriptions of these contacts to these topics, as stored."""
    return StoredRows(_read(session, _SUBSCRIPTION, contact_ids, topic_ids=topic_ids))


def read_suppressions(session: Session, contact_ids: list[int]) -> StoredRows:
    """The contact-wide opt-outs of these contacts, as stored."""
    return StoredRows(_read(session, _SUPPRESSION, contact_ids))


def _read(
    session: Session,
    table: Any,
    contact_ids: list[int],
    *,
    topic_ids: set[int] | None = None,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The stored rows of these contacts (and topics), whole, by their key."""
    if not contact_ids or topic_ids == set():
        return {}
    postgres = postgres_session(session)
    query = select(table).where(
        among(table.c.contact_id, contact_ids, Integer(), postgres=postgres)
    )
    if topic_ids is not None:
        query = query.where(table.c.topic_id.in_(sorted(topic_ids)))
    key = _SUBSCRIPTION_KEY if topic_ids is not None else _SUPPRESSION_KEY
    return {tuple(row[k] for k in key): dict(row) for row in session.execute(query).mappings()}


def _upsert_pg(cursor: PostgresCursor, table: Any, rows: StoredRows) -> None:
    """Every written row as the batch leaves it, in one INSERT … ON CONFLICT DO UPDATE with
    the rows as one JSON parameter: an executemany would be one round trip per row, and an
    array per column goes through the driver's pure-Python list dumper element by element."""
    if not rows.written:
        return
    columns = {c.name for c in table.columns}
    ordered = [rows.by_key[k] for k in sorted(rows.written)]
    # Each row as it is: the server takes the table's columns from it by name (and would
    # make a missing one null, so none may be).
    if not all(columns <= row.keys() for row in ordered):
        raise ValueError(f"a written {table.name} row lacks a column")
    cursor.execute(_JSON_UPSERT[table.name], {"rows": orjson.dumps(ordered).decode()})


def _upsert_sqlite(session: Session, table: Any, key: tuple[str, ...], rows: StoredRows) -> None:
    """Every written row as the batch leaves it, in one INSERT … ON CONFLICT DO UPDATE."""
    if not rows.written:
        return
    columns = [c.name for c in table.columns]
    ordered = [rows.by_key[k] for k in sorted(rows.written)]
    statement = sqlite.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={c: statement.excluded[c] for c in columns if c not in key},
    )
    session.execute(statement, [{c: row[c] for c in columns} for row in ordered])


def _json_upsert(table: Any, key: tuple[str, ...]) -> str:
    """`INSERT … SELECT FROM json_populate_recordset(<the rows as one JSON array>) ON CONFLICT
    DO UPDATE` of `table` (PostgreSQL): the server parses the rows into the table's own
    column types."""
    columns = ", ".join(c.name for c in table.columns)
    updates = ", ".join(f"{c.name} = excluded.{c.name}" for c in table.columns if c.name not in key)
    return (
        f"INSERT INTO {table.name} ({columns}) "  # noqa: S608  (the models' names)
        f"SELECT {columns} FROM json_populate_recordset(NULL::{table.name}, %(rows)s::json) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


_JSON_UPSERT = {
    _SUBSCRIPTION.name: _json_upsert(_SUBSCRIPTION, _SUBSCRIPTION_KEY),
    _SUPPRESSION.name: _json_upsert(_SUPPRESSION, _SUPPRESSION_KEY),
}
