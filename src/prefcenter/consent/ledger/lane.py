"""A person's opt-out through an unsubscribe link (RFC 8058 one-click or the page's button) on
PostgreSQL in two round trips and no ORM: the hottest write of the service; and the one read
behind the unsubscribe page (`read_link_contact`, both engines). Statements run on the
driver's cursor (db.Database.run_on_connection), in autocommit mode.

1. `read_optout_state`: one SELECT (autocommit) of the contact, the token's topic, its
   subscription and the contact-wide suppression.
2. Python decides and builds the row values and the audit event (keyed hashes, evidence
   document) with the write model's own functions (ledger.changes), exactly as the locking
   path (ledger.orm) does, before any lock is taken.
3. `write_optout`: one statement (autocommit, so its own transaction) that locks the contact
   (still at the address read in 1), compare-and-sets the subscription or suppression row
   against what 1 read, and only if that row was written appends the audit event, taking the
   head lock last (audit.service.guarded_append_pg), and queues its webhook deliveries
   (webhooks.queue.guarded_queue_pg). State, event and deliveries commit together or not at
   all.

If anything changed between 1 and 3 (a concurrent change, a correction, an erasure), the
statement writes nothing and says so; the caller then takes the locking ORM path
(preference_center.service.unsubscribe). A superseded change (the stored state is newer than
now, clocks apart) is left to that path too: it is rare and writes only an event.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.schemas import new_event_id
from prefcenter.audit.service import guarded_append_pg
from prefcenter.consent.ledger.changes import (
    SUBSCRIPTION_COLUMNS,
    SUPPRESSION_COLUMNS,
    ChangeRecord,
    change_event,
    decide_global_change,
    decide_topic_change,
    subscription_change,
    suppression_change,
)
from prefcenter.consent.ledger.state import stored_subscription_state, stored_suppression_state
from prefcenter.consent.rules import CurrentState, Outcome, RequestedChange, Status
from prefcenter.driver import driver_sql
from prefcenter.topics.schemas import TopicKind
from prefcenter.webhooks.queue import guarded_queue_pg
from prefcenter.webhooks.rules import types_of_event


@dataclass(frozen=True, slots=True)
class OptOutState:
    """What the opt-out is decided on, as read in one statement."""

    contact_row_id: int
    public_id: str
    address: str | None
    erased: bool
    topic_id: int | None  # None: the token names no topic, or one that is gone (all marketing)
    topic_key: str | None
    topic_name: str | None
    # The rows as read, in the order the compare-and-set compares them (_EXPECTED_*); None
    # when there is none. subscription: (status, occurred_at, by_recipient, event_id);
    # suppression: (suppressed, occurred_at, by_recipient).
    subscription: tuple[str, datetime, bool, str] | None
    suppression: tuple[bool, datetime, bool] | None

    @property
    def current(self) -> CurrentState | None:
        """The state the change is decided against (the subscription, or the suppression for
        a contact-wide change), read as every writer reads it (ledger.state)."""
        if self.topic_id is not None:
            if self.subscription is None:
                return None
            status, occurred_at, by_recipient, _ = self.subscription
            return stored_subscription_state(status, occurred_at, by_recipient)
        if self.suppression is None:
            return None
        return stored_suppression_state(*self.suppression)


_READ = """
SELECT c.id, c.address, c.erased_at IS NOT NULL, t.id, t.key, t.name,
    s.status, s.occurred_at, s.by_recipient, s.event_id,
    p.suppressed, p.occurred_at, p.by_recipient
FROM contact AS c
LEFT JOIN topic AS t ON t.key = %(topic)s
LEFT JOIN subscription AS s ON s.contact_id = c.id AND s.topic_id = t.id
LEFT JOIN suppression AS p ON p.contact_id = c.id
WHERE c.public_id = %(public_id)s
"""


def read_optout_state(cursor: Any, *, public_id: str, topic_key: str | None) -> OptOutState | None:
    """The contact of `public_id` with its state for `topic_key` (None: all marketing); None
    when there is no such contact."""
    cursor.execute(_READ, {"public_id": public_id, "topic": topic_key})
    row = cursor.fetchone()
    if row is None:
        return None
    return OptOutState(
        contact_row_id=row[0],
        public_id=public_id,
        address=row[1],
        erased=row[2],
        topic_id=row[3],
        topic_key=row[4],
        topic_name=row[5],
        subscription=None if row[6] is None else (row[6], row[7], row[8], row[9]),
        suppression=None if row[10] is None else (row[10], row[11], row[12]),
    )


_LOCKED = """locked AS (
    SELECT id FROM contact
    WHERE id = %(w_contact)s AND address = %(w_address)s AND erased_at IS NULL
    FOR UPDATE
)"""
_SUBSCRIPTION_COLUMNS = SUBSCRIPTION_COLUMNS
_SUPPRESSION_COLUMNS = SUPPRESSION_COLUMNS
_GUARD = "EXISTS (SELECT 1 FROM written)"


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"""written AS (
    INSERT INTO {table} (contact_id, {", ".join(columns)})
    SELECT %(w_contact)s, {", ".join(f"%(w_{c})s" for c in columns)}
    WHERE EXISTS (SELECT 1 FROM locked)
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""  # noqa: S608  (table and columns are this module's constants)


def _update(table: str, columns: tuple[str, ...], expected: tuple[str, ...], key: str) -> str:
    return f"""written AS (
    UPDATE {table} SET {", ".join(f"{c} = %(w_{c})s" for c in columns)}
    WHERE {key} AND {" AND ".join(f"{c} = %(x_{c})s" for c in expected)}
        AND EXISTS (SELECT 1 FROM locked)
    RETURNING 1
)"""  # noqa: S608  (table and columns are this module's constants)


_TOPIC_KEY = "contact_id = %(w_contact)s AND topic_id = %(w_topic_id)s"
_EXPECTED_SUBSCRIPTION = ("status", "occurred_at", "by_recipient", "event_id")
_EXPECTED_SUPPRESSION = ("suppressed", "occurred_at", "by_recipient")


def _statement(written: str, append_ctes: str, hooks: str) -> str:
    # Built from this module's, audit.service's and webhooks.queue's constants; every value
    # is a parameter.
    return f"WITH {_LOCKED}, {written}, {append_ctes}{hooks}SELECT seq FROM moved"  # noqa: S608


@dataclass(frozen=True, slots=True)
class OptOutWritten:
    decision_outcome: Outcome
    event_id: str


def write_optout(
    cursor: Any,
    state: OptOutState,
    *,
    requested: RequestedChange,
    record: ChangeRecord,
    keys: AuditKeys,
    now: datetime,
) -> OptOutWritten | None:
    """Decide and write the opt-out read in `state`, with its audit event, in one statement.
    None when nothing was written: the state moved on since it was read, or the change is
    superseded (see the module's doc); the caller then takes the locking path."""
    assert requested.status is Status.UNSUBSCRIBED, "the opt-out path only opts out"
    if state.erased or state.address is None:
        return None
    requested = replace(requested, with_evidence=bool(record.evidence))
    if state.topic_id is not None:
        # An opt-out never reads the contact-wide state (ledger.changes.needs_suppression).
        decision = decide_topic_change(
            state.current, None, topic_kind=TopicKind.MARKETING, requested=requested, now=now
        )
    else:
        decision = decide_global_change(state.current, requested, now=now)
    if decision.outcome is Outcome.SUPERSEDED:
        return None
    event = change_event(
        event_id=new_event_id(),
        contact_id=state.public_id,
        address=state.address,
        topic_key=state.topic_key,
        requested=requested,
        record=record,
        decision=decision,
    )
    params: dict[str, Any] = {"w_contact": state.contact_row_id, "w_address": state.address}
    columns: tuple[str, ...]
    if state.topic_id is not None:
        values = subscription_change(decision, requested, now=now, event_id=event.id)
        params["w_topic_id"] = state.topic_id
        if state.subscription is None:
            written = _insert_subscription
            columns = ("topic_id", *_SUBSCRIPTION_COLUMNS)
            values["topic_id"] = state.topic_id
        else:
            written = _UPDATE_SUBSCRIPTION[frozenset(values)]
            columns = tuple(values)
            params.update(
                zip((f"x_{c}" for c in _EXPECTED_SUBSCRIPTION), state.subscription, strict=True)
            )
    else:
        was = None if state.suppression is None else state.suppression[0]
        values = suppression_change(decision, requested, now=now, was_suppressed=was)
        written, written_params = guarded_suppression_write(state.suppression, values)
        params.update(written_params)
        columns = ()
    params.update((f"w_{c}", values[c]) for c in columns)
    append_ctes, event_params = guarded_append_pg(keys, event, only_if=_GUARD)
    params.update(event_params)
    # Its webhook deliveries in the same statement, only if the event was appended.
    hooks, hook_params = guarded_queue_pg(
        event_id=event.id,
        contact_id=state.public_id,
        types=types_of_event(event.kind.value, outcome=event.outcome, to_status=event.to_status),
        now=now,
        only_if="EXISTS (SELECT 1 FROM moved)",
    )
    params.update(hook_params)
    cursor.execute(_statement(written, append_ctes, hooks), params)
    if cursor.fetchone() is None:
        return None
    return OptOutWritten(decision_outcome=decision.outcome, event_id=event.id)


def guarded_suppression_write(
    expected: tuple[bool, datetime, bool] | None, values: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The `written AS (…)` CTE that sets a contact's suppression to `values`
    (`suppression_change`'s) only if the row is still as read (`expected`: suppressed,
    occurred_at, by_recipient; None: there is none), with its parameters. It writes only where
    the caller's own `locked` CTE found the contact (`%(w_contact)s`, the caller's parameter)."""
    params: dict[str, Any]
    if expected is None:
        params = {f"w_{c}": values[c] for c in _SUPPRESSION_COLUMNS}
        return _insert_suppression, params
    params = {f"w_{c}": value for c, value in values.items()}
    params.update(zip((f"x_{c}" for c in _EXPECTED_SUPPRESSION), expected, strict=True))
    return _UPDATE_SUPPRESSION[frozenset(values)], params


_insert_subscription = _insert("subscription", ("topic_id", *_SUBSCRIPTION_COLUMNS))
_insert_suppression = _insert("suppression", _SUPPRESSION_COLUMNS)


def _updates(
    table: str,
    always: tuple[str, ...],
    sometimes: tuple[str, ...],
    expected: tuple[str, ...],
    key: str,
) -> dict[frozenset[str], str]:
    """One UPDATE per set of columns a change may set (`always`, plus all or none of
    `sometimes`), built once: the same texts every time, so psycopg prepares them."""
    return {
        frozenset(always): _update(table, always, expected, key),
        frozenset(always + sometimes): _update(table, always + sometimes, expected, key),
    }


_UPDATE_SUBSCRIPTION = _updates(
    "subscription",
    ("status", "occurred_at", "source", "by_recipient"),
    ("since", "event_id"),
    _EXPECTED_SUBSCRIPTION,
    _TOPIC_KEY,
)
_UPDATE_SUPPRESSION = _updates(
    "suppression",
    ("suppressed", "occurred_at", "source", "by_recipient"),
    ("since",),
    _EXPECTED_SUPPRESSION,
    "contact_id = %(w_contact)s",
)


@dataclass(frozen=True, slots=True)
class LinkContact:
    """What the unsubscribe page shows, as read in one statement."""

    address: str | None
    erased: bool
    topic_name: str | None  # None: the token names no topic, or one that is gone


_READ_PAGE = """
SELECT c.address, c.erased_at IS NOT NULL, t.name
FROM contact AS c LEFT JOIN topic AS t ON t.key = %(topic)s
WHERE c.public_id = %(public_id)s
"""
_READ_PAGE_SQLITE = driver_sql(_READ_PAGE, sqlite=True)


def read_link_contact(
    cursor: Any, *, public_id: str, topic_key: str | None, sqlite: bool
) -> LinkContact | None:
    """The contact of `public_id` and the name of the token's topic, for the unsubscribe page
    (both engines; a read that changes nothing); None when there is no such contact."""
    cursor.execute(
        _READ_PAGE_SQLITE if sqlite else _READ_PAGE, {"public_id": public_id, "topic": topic_key}
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return LinkContact(address=row[0], erased=bool(row[1]), topic_name=row[2])
