"""An API client's consent change on PostgreSQL in two round trips and no ORM: the statements
of consent.change_lane (`POST /v1/consents`), in the shape of the one-click's lane
(ledger.lane). Statements run on the driver's cursor in autocommit mode
(db.Database.run_on_connection).

1. `read_api_state` (ledger.api_state): one SELECT of the caller's API key (by its secret's
   hash, not revoked: read on every request, so a revoked key's next request is refused), the
   topic, the contact with the address, whether the address was erased, the contact's
   subscription of the topic and its suppression, and the caller's stored answer under its
   Idempotency-Key.
2. The caller decides in Python with the write model's own functions (ledger.changes), before
   any lock is taken.
3. `write_api_change`: one statement that locks the contact (still at the address, not erased)
   or creates it (unless the address was erased), compare-and-sets the subscription or
   suppression row against what 1 read, and only if that row was written appends the audit
   event (head lock last, audit.service.guarded_append_pg), queues its webhook deliveries and
   stores the answer under the Idempotency-Key. All of it commits together or not at all.

A decision that read the contact-wide opt-out of a contact that exists already (a
subscription to a marketing topic, ledger.changes.needs_suppression) rests on a row that 3 does
not write, so no compare-and-set of 3's own row covers it, and one statement cannot: its
snapshot is taken before it waits for the contact's lock, so a suppression committed by the
lock's holder would be invisible to it. Every writer of a suppression row holds the contact's
lock until it commits; so 3 then runs as two statements in one transaction, sent in one round
trip (a pipeline): the first takes the contact's lock, the second (whose snapshot is taken
after the lock is held) is 3 with the suppression compared against what 1 read as well
(`expected_suppression`). A suppression written since 1 makes it write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import NewEvent
from prefcenter.audit.service import guarded_append_pg
from prefcenter.consent.ledger.api_state import ApiChangeState
from prefcenter.idempotency import guarded_store_pg
from prefcenter.webhooks.queue import guarded_queue_pg
from prefcenter.webhooks.rules import types_of_event

# A unique index refused a row (PostgreSQL's unique_violation): a concurrent request stored
# the same Idempotency-Key first.
_UNIQUE_VIOLATION = "23505"


@dataclass(frozen=True, slots=True)
class NewContact:
    """The contact the statement creates when no contact has the address."""

    public_id: str
    address: str
    address_display: str
    address_hash: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AnswerToKeep:
    """The answer stored under the caller's Idempotency-Key with the change."""

    owner: str
    key: str
    request_hash: str
    status_code: int
    body: str
    created_at: datetime


_LOCK_CONTACT = """locked AS (
    SELECT id FROM contact
    WHERE id = %(w_contact)s AND address = %(w_address)s AND erased_at IS NULL
    FOR UPDATE
)"""
# The same, only while the suppression is what the decision read: none, or its row unchanged.
# Sound only in the second statement of `_locked_first`'s transaction (see the module).
_LOCK_CONTACT_UNSUPPRESSED = """locked AS (
    SELECT id FROM contact
    WHERE id = %(w_contact)s AND address = %(w_address)s AND erased_at IS NULL
        AND NOT EXISTS (SELECT 1 FROM suppression WHERE contact_id = %(w_contact)s)
    FOR UPDATE
)"""
_LOCK_CONTACT_SUPPRESSION_AS_READ = """locked AS (
    SELECT id FROM contact
    WHERE id = %(w_contact)s AND address = %(w_address)s AND erased_at IS NULL
        AND EXISTS (
            SELECT 1 FROM suppression WHERE contact_id = %(w_contact)s
                AND suppressed = %(y_suppressed)s AND occurred_at = %(y_occurred_at)s
                AND by_recipient = %(y_by_recipient)s
        )
    FOR UPDATE
)"""
# The first statement of that transaction: the contact's lock, and nothing else.
_LOCK_ONLY = """SELECT 1 FROM contact WHERE id = %(w_contact)s FOR UPDATE"""
# The erased check guards the insert in SQL, as consent.contact_creation does: an erased
# address is never stored, even for an instant. A concurrent creation of the same address
# makes no row, so nothing else is written either.
_CREATE_CONTACT = """locked AS (
    INSERT INTO contact (public_id, address, address_display, created_at)
    SELECT %(w_public_id)s, %(w_address)s, %(w_address_display)s, %(w_created_at)s
    WHERE NOT EXISTS (SELECT 1 FROM erased_address WHERE address_hash = %(w_address_hash)s)
    ON CONFLICT (address) DO NOTHING
    RETURNING id
)"""
_SUBSCRIPTION_KEY = "contact_id = %(w_contact)s AND topic_id = %(w_topic_id)s"
_SUPPRESSION_KEY = "contact_id = %(w_contact)s"
_EXPECTED_SUBSCRIPTION = ("status", "occurred_at", "by_recipient", "event_id")
_EXPECTED_SUPPRESSION = ("suppressed", "occurred_at", "by_recipient")


@cache
def _insert(table: str, columns: tuple[str, ...]) -> str:
    """The row, for the contact `locked` holds; none if another request made it first."""
    return f"""written AS (
    INSERT INTO {table} (contact_id, {", ".join(columns)})
    SELECT id, {", ".join(f"%(w_{c})s" for c in columns)} FROM locked
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""  # noqa: S608  (table and columns are this module's and ledger.changes' constants)


@cache
def _update(table: str, columns: tuple[str, ...], expected: tuple[str, ...], key: str) -> str:
    """The row, only if it still says what the decision read (compare-and-set); built once
    per set of columns, so the same texts every time (psycopg prepares them)."""
    return f"""written AS (
    UPDATE {table} SET {", ".join(f"{c} = %(w_{c})s" for c in columns)}
    WHERE {key} AND {" AND ".join(f"{c} = %(x_{c})s" for c in expected)}
        AND EXISTS (SELECT 1 FROM locked)
    RETURNING 1
)"""  # noqa: S608  (table and columns are this module's and ledger.changes' constants)


def _locked(
    state: ApiChangeState,
    new_contact: NewContact | None,
    params: dict[str, Any],
    *,
    expected_suppression: bool,
) -> str:
    """The `locked` CTE, its parameters added to `params`."""
    if new_contact is not None:
        assert state.contact_row_id is None
        params.update(
            w_public_id=new_contact.public_id,
            w_address_display=new_contact.address_display,
            w_address_hash=new_contact.address_hash,
            w_created_at=new_contact.created_at,
        )
        return _CREATE_CONTACT
    assert state.contact_row_id is not None
    params["w_contact"] = state.contact_row_id
    if not expected_suppression:
        return _LOCK_CONTACT
    if state.suppression is None:
        return _LOCK_CONTACT_UNSUPPRESSED
    params.update(zip((f"y_{c}" for c in _EXPECTED_SUPPRESSION), state.suppression, strict=True))
    return _LOCK_CONTACT_SUPPRESSION_AS_READ


def write_api_change(
    cursor: Any,
    state: ApiChangeState,
    *,
    values: dict[str, Any],
    new_contact: NewContact | None,
    event: NewEvent,
    keys: AuditKeys,
    answer: AnswerToKeep | None,
    now: datetime,
    expected_suppression: bool = False,
) -> bool:
    """Write the decided change read in `state`: `values`, the columns it sets on the
    subscription of `state.topic` (or, without a topic, on the suppression), as
    ledger.changes made them; the contact `new_contact` first when `state` found none; its
    audit `event`, its webhook deliveries and `answer`. One statement; False when nothing was
    written (the state moved on since it was read, the address was taken or erased meanwhile,
    or the Idempotency-Key was stored by a concurrent request): the caller then takes the
    locking path. `expected_suppression`: the decision read the contact-wide opt-out of the
    contact that exists (see the module): it must still be as read, checked after the lock."""
    params: dict[str, Any] = {"w_address": event.address}
    locked = _locked(state, new_contact, params, expected_suppression=expected_suppression)
    columns: tuple[str, ...]
    if state.topic is not None:
        params["w_topic_id"] = state.topic.id
        if state.subscription is None:
            columns = ("topic_id", *values)
            values = {"topic_id": state.topic.id, **values}
            written = _insert("subscription", columns)
        else:
            columns = tuple(values)
            written = _update("subscription", columns, _EXPECTED_SUBSCRIPTION, _SUBSCRIPTION_KEY)
            params.update(
                zip((f"x_{c}" for c in _EXPECTED_SUBSCRIPTION), state.subscription, strict=True)
            )
    elif state.suppression is None:
        columns = tuple(values)
        written = _insert("suppression", columns)
    else:
        columns = tuple(values)
        written = _update("suppression", columns, _EXPECTED_SUPPRESSION, _SUPPRESSION_KEY)
        params.update(
            zip((f"x_{c}" for c in _EXPECTED_SUPPRESSION), state.suppression, strict=True)
        )
    params.update((f"w_{c}", values[c]) for c in columns)
    append_ctes, event_params = guarded_append_pg(
        keys, event, only_if="EXISTS (SELECT 1 FROM written)"
    )
    params.update(event_params)
    assert event.contact_id is not None
    hooks, hook_params = guarded_queue_pg(
        event_id=event.id,
        contact_id=event.contact_id,
        types=types_of_event(event.kind.value, outcome=event.outcome, to_status=event.to_status),
        now=now,
        only_if="EXISTS (SELECT 1 FROM moved)",
    )
    params.update(hook_params)
    kept = ""
    if answer is not None:
        kept, kept_params = guarded_store_pg(
            owner=answer.owner,
            key=answer.key,
            request_hash=answer.request_hash,
            status_code=answer.status_code,
            body=answer.body,
            created_at=answer.created_at,
            only_if="EXISTS (SELECT 1 FROM moved)",
        )
        params.update(kept_params)
    # Built from this module's, audit.service's, webhooks.queue's and idempotency's constants;
    # every value is a parameter.
    statement = f"WITH {locked}, {written}, {append_ctes}{hooks}{kept}SELECT seq FROM moved"  # noqa: S608
    try:
        if expected_suppression and new_contact is None:
            return _locked_first(cursor, params, statement)
        cursor.execute(statement, params)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION:
            return False  # autocommit: the statement rolled back on its own, nothing written
        raise
    return cursor.fetchone() is not None


def _locked_first(cursor: Any, params: dict[str, Any], statement: str) -> bool:
    """`statement` in a transaction after the contact's lock is taken, in one round trip: a
    pipeline of BEGIN, the lock, `statement`, COMMIT. On a unique_violation nothing of it was
    written: the transaction is rolled back here, and the error raised."""
    connection = cursor.connection
    written = connection.cursor()
    try:
        with connection.pipeline():
            cursor.execute("BEGIN")
            cursor.execute(_LOCK_ONLY, {"w_contact": params["w_contact"]})
            written.execute(statement, params)
            cursor.execute("COMMIT")
        return written.fetchone() is not None
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION:
            connection.execute("ROLLBACK")
        raise
    finally:
        written.close()
