"""Owns the SQL of an import batch: stage its addresses, create missing contacts, lock and read
their state in one query, and write the decided subscriptions in one statement.

Set-based on both engines: PostgreSQL fills TEMP tables with `COPY`, SQLite with
`executemany`; everything after that is one statement per step, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Integer, String, bindparam, text
from sqlalchemy.dialects import sqlite
from sqlmodel import Session

from prefcenter.consent.models import Subscription
from prefcenter.consent.rules import CurrentState, Status
from prefcenter.db import UtcDateTime
from prefcenter.imports.rules import ContactState

# Any fixed number: held by each import batch until it commits, so that two imports never
# interleave their contact locks (API writers lock one contact at a time and cannot
# deadlock against a batch that locks in contact id order).
_IMPORT_LOCK_ID = 0x696D7074  # "impt"


@dataclass(frozen=True, slots=True)
class StoredContact:
    id: int
    public_id: str
    state: ContactState


@dataclass(frozen=True, slots=True)
class SubscriptionWrite:
    """A contact's subscription to the topic as the batch leaves it."""

    contact_id: int
    status: Status
    occurred_at: datetime
    by_recipient: bool
    event_id: str


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _copy(session: Session, statement: str, rows: Sequence[Sequence[Any]]) -> None:
    """`COPY … FROM STDIN` on the session's own connection (inside its transaction)."""
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def stage_addresses(session: Session, addresses: Sequence[tuple[str, str, str]]) -> None:
    """(normalised address, address as given, a new public id) for each distinct address of
    the batch, in a TEMP table the next statements join against."""
    if _postgres(session):
        session.execute(
            text(
                "CREATE TEMP TABLE import_address "
                "(address text PRIMARY KEY, display text, public_id text) ON COMMIT DROP"
            )
        )
        _copy(session, "COPY import_address (address, display, public_id) FROM STDIN", addresses)
        # Fresh statistics: without them the planner may hash-join against every contact.
        session.execute(text("ANALYZE import_address"))
        return
    session.execute(text("DROP TABLE IF EXISTS temp.import_address"))
    session.execute(
        text(
            "CREATE TEMP TABLE import_address "
            "(address TEXT PRIMARY KEY, display TEXT, public_id TEXT)"
        )
    )
    if not addresses:
        return
    session.connection().exec_driver_sql(
        "INSERT INTO temp.import_address (address, display, public_id) VALUES (?, ?, ?)",
        list(addresses),
    )


def drop_staging(session: Session) -> None:
    """SQLite keeps TEMP tables for the connection's life; PostgreSQL drops them at commit."""
    if not _postgres(session):
        session.execute(text("DROP TABLE IF EXISTS temp.import_address"))


def lock_imports(session: Session) -> None:
    """One import batch at a time (PostgreSQL; SQLite's write transaction already is)."""
    if _postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _IMPORT_LOCK_ID})


# In address order: two writers inserting the same new addresses meet them in one order.
_CREATE_CONTACTS = text(
    "INSERT INTO contact (public_id, address, address_display, created_at) "
    "SELECT public_id, address, display, :now FROM import_address WHERE true "
    "ORDER BY address ON CONFLICT (address) DO NOTHING"
).bindparams(bindparam("now", type_=UtcDateTime()))


def create_contacts(session: Session, *, now: datetime) -> None:
    """A contact for every staged address that has none (a concurrent writer's wins)."""
    session.execute(_CREATE_CONTACTS, {"now": now})


_READ_STATES = (
    "SELECT c.id, c.public_id, c.address, c.erased_at, "
    "s.status, s.occurred_at AS s_occurred_at, s.by_recipient AS s_by_recipient, "
    "p.suppressed, p.occurred_at AS p_occurred_at, p.by_recipient AS p_by_recipient "
    "FROM import_address a JOIN contact c ON c.address = a.address "
    "LEFT JOIN subscription s ON s.contact_id = c.id AND s.topic_id = :topic_id "
    "LEFT JOIN suppression p ON p.contact_id = c.id "
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


def read_states(session: Session, *, topic_id: int, lock: bool) -> dict[str, StoredContact]:
    """The staged addresses' contacts with their subscription to the topic and their
    contact-wide opt-out, in one query; with `lock`, the contacts are locked in id order
    until the transaction ends (PostgreSQL; SQLite's write transaction already excludes
    every other writer)."""
    sql = _READ_STATES + (" FOR UPDATE OF c" if lock and _postgres(session) else "")
    query = text(sql).columns(**_STATE_COLUMNS)
    found: dict[str, StoredContact] = {}
    for row in session.execute(query, {"topic_id": topic_id}).mappings():
        subscription = (
            CurrentState(Status(row["status"]), row["s_occurred_at"], bool(row["s_by_recipient"]))
            if row["status"] is not None
            else None
        )
        suppression = (
            CurrentState(
                Status.UNSUBSCRIBED if row["suppressed"] else Status.SUBSCRIBED,
                row["p_occurred_at"],
                bool(row["p_by_recipient"]),
            )
            if row["suppressed"] is not None
            else None
        )
        found[row["address"]] = StoredContact(
            id=row["id"],
            public_id=row["public_id"],
            state=ContactState(
                erased=row["erased_at"] is not None,
                suppression=suppression,
                subscription=subscription,
            ),
        )
    return found


_MERGE_SUBSCRIPTIONS = text(
    "INSERT INTO subscription "
    "(contact_id, topic_id, status, occurred_at, since, source, by_recipient, event_id) "
    "SELECT contact_id, :topic_id, status, occurred_at, :now, :source, by_recipient, event_id "
    "FROM import_subscription WHERE true "
    "ON CONFLICT (contact_id, topic_id) DO UPDATE SET status = excluded.status, "
    "occurred_at = excluded.occurred_at, since = excluded.since, source = excluded.source, "
    "by_recipient = excluded.by_recipient, event_id = excluded.event_id"
).bindparams(bindparam("now", type_=UtcDateTime()))


def write_subscriptions(
    session: Session,
    writes: Sequence[SubscriptionWrite],
    *,
    topic_id: int,
    source: str,
    now: datetime,
) -> None:
    """Insert or overwrite each contact's subscription to the topic, in one statement."""
    if not writes:
        return
    if _postgres(session):
        session.execute(
            text(
                "CREATE TEMP TABLE import_subscription (contact_id integer, status text, "
                "occurred_at timestamptz, by_recipient boolean, event_id text) ON COMMIT DROP"
            )
        )
        _copy(
            session,
            "COPY import_subscription (contact_id, status, occurred_at, by_recipient, event_id) "
            "FROM STDIN",
            [
                (w.contact_id, w.status.value, w.occurred_at, w.by_recipient, w.event_id)
                for w in writes
            ],
        )
        session.execute(_MERGE_SUBSCRIPTIONS, {"topic_id": topic_id, "now": now, "source": source})
        return
    insert = sqlite.insert(Subscription)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["contact_id", "topic_id"],
            set_={
                name: insert.excluded[name]
                for name in ("status", "occurred_at", "since", "source", "by_recipient", "event_id")
            },
        ),
        [
            {
                "contact_id": w.contact_id,
                "topic_id": topic_id,
                "status": w.status.value,
                "occurred_at": w.occurred_at,
                "since": now,
                "source": source,
                "by_recipient": w.by_recipient,
                "event_id": w.event_id,
            }
            for w in writes
        ],
    )
