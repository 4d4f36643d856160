"""An API client's consent change on SQLite without the ORM: the write of consent.change_lane
(`POST /v1/consents`) for SQLite, whose writers take turns (sqlite_writers) and hold the
database's one write lock from BEGIN IMMEDIATE to COMMIT.

Every writer waits for that lock, so what runs inside it is the service's ceiling: the Python
of the ORM path (a session, its flushes, the event's keyed hashes and evidence document, the
answer) ran there, some 3 ms a change. Here everything that does not depend on the stored state
is done before the turn is taken, from a read outside any write transaction (WAL: it waits for
no writer): the decision, the row values, the audit event made ready for the chain
(audit.prepared), the answer and its JSON. The turn then covers only

1. the same read again, which must find exactly what the first one found (the key not
   revoked, the topic, the contact at the address, not erased, its subscription and
   suppression, no answer stored under the Idempotency-Key): anything else and nothing is
   written, the caller hands the request to the locking path, which decides it afresh;
2. the writes, as plain statements on the driver: the contact if new (guarded in SQL by the
   erased check, as consent.contact_creation's insert is), the subscription or suppression
   row, the audit event chained onto the head (audit.driver_appends), its webhook deliveries
   (webhooks.queue) and the answer under the Idempotency-Key; then COMMIT.

They are the rows, values and bytes the ORM path writes (tests/consent/test_change_lane.py
compares them), and all commit together or not at all.

The lane itself (consent.change_lane) runs on SQLite in a batch of sqlite_batches instead:
the turn and the transaction are the batch's, the state is read inside it, so step 1 has
nothing to compare and only step 2 runs here (`in_turn`), in the change's savepoint.
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from datetime import datetime
from functools import cache
from typing import Any

from prefcenter.audit.driver_appends import append_sqlite_on_cursor
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.prepared import PreparedEvent, prepare_event
from prefcenter.audit.schemas import NewEvent
from prefcenter.consent.ledger.api_lane import AnswerToKeep, NewContact
from prefcenter.consent.ledger.api_state import ApiChangeState, StateQuery, read_state
from prefcenter.driver import DriverCursor
from prefcenter.idempotency import store_sqlite
from prefcenter.settings import Settings
from prefcenter.sqlite_times import sqlite_text
from prefcenter.sqlite_writers import writer_turn
from prefcenter.webhooks.queue import contact_deliveries_sqlite
from prefcenter.webhooks.rules import EventType, types_of_event

# An erased address is never stored, even for the instant before a rollback: the check guards
# the insert itself (consent.contact_creation's rule).
_CREATE_CONTACT = """INSERT INTO contact (public_id, address, address_display, created_at)
SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM erased_address WHERE address_hash = ?)
RETURNING id"""


@cache
def _insert(table: str, columns: tuple[str, ...]) -> str:
    return (
        f"INSERT INTO {table} (contact_id, {', '.join(columns)}) "  # noqa: S608
        f"VALUES (?, {', '.join('?' * len(columns))})"
    )


@cache
def _update(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    return (
        f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} "  # noqa: S608
        f"WHERE {' AND '.join(f'{c} = ?' for c in key)}"
    )


def _stored(value: Any) -> Any:
    """A value as SQLAlchemy stores it on SQLite (times as db.UtcDateTime's text)."""
    return sqlite_text(value) if isinstance(value, datetime) else value


def write_api_change_sqlite(
    cursor: DriverCursor,
    state: ApiChangeState,
    *,
    query: StateQuery,
    settings: Settings,
    values: dict[str, Any],
    new_contact: NewContact | None,
    event: NewEvent,
    keys: AuditKeys,
    answer: AnswerToKeep | None,
    now: datetime,
    in_turn: bool = False,
) -> bool:
    """Write the change decided on `state` (read by `query`), in the database's write turn:
    `values`, the columns it sets on the subscription of `state.topic` (or, without a topic,
    on the suppression), as ledger.changes made them; `new_contact` first when `state` found
    none; its audit `event`, its webhook deliveries and `answer`. False when nothing was
    written: the read of `query` again, in the turn, found the state moved on (or the
    contact's insert met an erased address); the caller then hands the request to the locking
    path. Raises what the turn raises (a 503 to retry) and the driver's errors, nothing
    written.

    `in_turn`: `state` was read inside the write transaction this runs in (a batch of
    sqlite_batches, which owns the turn, the transaction and its savepoints): nothing is read
    again, and the driver's errors (a unique row) are raised for the batch to undo the
    write."""
    assert event.contact_id is not None
    prepared = prepare_event(keys, event)  # the keyed hashes and the document, before the turn
    hooks = types_of_event(event.kind.value, outcome=event.outcome, to_status=event.to_status)
    if in_turn:
        return _write(
            cursor, state, values, new_contact, prepared, event.contact_id, hooks, answer, now
        )
    with writer_turn(settings):
        cursor.execute("BEGIN IMMEDIATE")
        try:
            written = read_state(cursor, query, sqlite=True) == state and _write(
                cursor, state, values, new_contact, prepared, event.contact_id, hooks, answer, now
            )
            cursor.execute("COMMIT" if written else "ROLLBACK")
        except sqlite3.IntegrityError:
            # A unique row another writer made before this turn, which the read could not
            # see (a public id drawn twice): nothing of it is kept.
            cursor.execute("ROLLBACK")
            return False
        except BaseException:
            with suppress(sqlite3.Error):
                cursor.execute("ROLLBACK")  # before the turn passes on (the error may be COMMIT's)
            raise
    return written


def _write(
    cursor: DriverCursor,
    state: ApiChangeState,
    values: dict[str, Any],
    new_contact: NewContact | None,
    event: PreparedEvent,
    contact_public_id: str,
    hooks: tuple[EventType, ...],
    answer: AnswerToKeep | None,
    now: datetime,
) -> bool:
    contact_id = state.contact_row_id
    if new_contact is not None:
        cursor.execute(
            _CREATE_CONTACT,
            (
                new_contact.public_id,
                new_contact.address,
                new_contact.address_display,
                sqlite_text(new_contact.created_at),
                new_contact.address_hash,
            ),
        )
        created = cursor.fetchone()
        if created is None:
            return False
        contact_id = created[0]
    assert contact_id is not None
    columns = tuple(values)
    stored = [_stored(values[c]) for c in columns]
    if state.topic is not None:
        if state.subscription is None:
            cursor.execute(
                _insert("subscription", ("topic_id", *columns)),
                (contact_id, state.topic.id, *stored),
            )
        else:
            cursor.execute(
                _update("subscription", columns, ("contact_id", "topic_id")),
                (*stored, contact_id, state.topic.id),
            )
    elif state.suppression is None:
        cursor.execute(_insert("suppression", columns), (contact_id, *stored))
    else:
        cursor.execute(_update("suppression", columns, ("contact_id",)), (*stored, contact_id))
    append_sqlite_on_cursor(cursor, [event])
    if hooks:
        statement, params = contact_deliveries_sqlite(
            event_id=event.row["id"], contact_id=contact_public_id, types=hooks, now=now
        )
        cursor.execute(statement, params)
    if answer is not None:
        store_sqlite(
            cursor,
            owner=answer.owner,
            key=answer.key,
            request_hash=answer.request_hash,
            status_code=answer.status_code,
            body=answer.body,
            created_at=answer.created_at,
        )
    return True
