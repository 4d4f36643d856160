"""Owns the one read an API client's consent change is decided on, on both engines: the
caller's API key, the topic, the contact with the address and whether it was erased, its
subscription and suppression, the caller's stored answer under its Idempotency-Key
(`read_api_state`). consent.change_lane reads it before deciding; on PostgreSQL the write
compares against it (ledger.api_lane), on SQLite the write turn reads it again
(ledger.api_lane_sqlite)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefcenter.apikeys.schemas import Caller
from prefcenter.apikeys.service import CALLER_COLUMNS, CALLER_MATCH, caller_of_row
from prefcenter.consent.ledger.state import stored_subscription_state, stored_suppression_state
from prefcenter.consent.rules import CurrentState
from prefcenter.driver import driver_sql
from prefcenter.idempotency import StoredAnswer
from prefcenter.sqlite_times import from_sqlite_text


@dataclass(frozen=True, slots=True)
class TopicRow:
    """The topic's columns, as the read returns them (topics.models.Topic's order)."""

    id: int
    key: str
    name: str
    description: str | None
    kind: str
    consent: str
    double_opt_in: bool
    third_party: str | None
    created_at: datetime
    updated_at: datetime
    notice_key: str | None


@dataclass(frozen=True, slots=True)
class ApiChangeState:
    """What an API change is decided on, as read in one statement."""

    topic: TopicRow | None  # None: no topic asked, or no such topic
    contact_row_id: int | None  # None: no contact has the address
    public_id: str | None
    address_erased: bool
    # The rows as read, in the order the compare-and-set compares them; None when there is
    # none. subscription: (status, occurred_at, by_recipient, event_id); suppression:
    # (suppressed, occurred_at, by_recipient).
    subscription: tuple[str, datetime, bool, str] | None
    suppression: tuple[bool, datetime, bool] | None
    stored_answer: StoredAnswer | None  # the caller's answer under its Idempotency-Key
    caller: Caller | None  # None: no such key, or it was revoked

    @property
    def subscription_state(self) -> CurrentState | None:
        if self.subscription is None:
            return None
        status, occurred_at, by_recipient, _ = self.subscription
        return stored_subscription_state(status, occurred_at, by_recipient)

    @property
    def suppression_state(self) -> CurrentState | None:
        if self.suppression is None:
            return None
        return stored_suppression_state(*self.suppression)


_TOPIC_COLUMNS = (
    "id",
    "key",
    "name",
    "description",
    "kind",
    "consent",
    "double_opt_in",
    "third_party",
    "created_at",
    "updated_at",
    "notice_key",
)
_READ = f"""
SELECT {", ".join(f"t.{c}" for c in _TOPIC_COLUMNS)},
    c.id, c.public_id,
    c.erased_at IS NOT NULL
        OR EXISTS (SELECT 1 FROM erased_address WHERE address_hash = %(address_hash)s),
    s.status, s.occurred_at, s.by_recipient, s.event_id,
    p.suppressed, p.occurred_at, p.by_recipient,
    i.request_hash, i.status_code, i.response_body,
    {", ".join(CALLER_COLUMNS)}
FROM (SELECT 1) AS one
LEFT JOIN api_key AS k ON {CALLER_MATCH}
LEFT JOIN topic AS t ON t.key = %(topic)s
LEFT JOIN contact AS c ON c.address = %(address)s
LEFT JOIN subscription AS s ON s.contact_id = c.id AND s.topic_id = t.id
LEFT JOIN suppression AS p ON p.contact_id = c.id
LEFT JOIN idempotency_record AS i ON i.owner = 'api_key:' || k.id AND i.key = %(key)s
"""  # noqa: S608  (built from this module's constants; every value is a parameter)
_READ_SQLITE = driver_sql(_READ, sqlite=True)
_CONTACT_AT = len(_TOPIC_COLUMNS)
# What sqlite3 returns as integers (booleans) and as text (times, as db.UtcDateTime stores
# them), by place in the row: read as the ORM reads them.
_SQLITE_BOOLS = (
    _TOPIC_COLUMNS.index("double_opt_in"),
    _CONTACT_AT + 5,
    _CONTACT_AT + 7,
    _CONTACT_AT + 9,
)
_SQLITE_TIMES = (
    _TOPIC_COLUMNS.index("created_at"),
    _TOPIC_COLUMNS.index("updated_at"),
    _CONTACT_AT + 4,
    _CONTACT_AT + 8,
)


def _from_sqlite(row: tuple[Any, ...]) -> list[Any]:
    values = list(row)
    for at in _SQLITE_BOOLS:
        if values[at] is not None:
            values[at] = bool(values[at])
    for at in _SQLITE_TIMES:
        if values[at] is not None:
            values[at] = from_sqlite_text(values[at])
    return values


def read_api_state(
    cursor: Any,
    *,
    topic_key: str | None,
    address: str,
    address_hash: str,
    secret_hash: str,
    idempotency_key: str | None,
    sqlite: bool = False,
) -> ApiChangeState:
    """The state an API change of `address` (normalised) and `topic_key` (None: all
    marketing) is decided on; `address_hash`: its keyed hash (the erased check);
    `secret_hash`: the hash of the caller's bearer secret (apikeys.service.hash_secret).
    Both engines (`sqlite`: on a sqlite3 cursor)."""
    cursor.execute(
        _READ_SQLITE if sqlite else _READ,
        {
            "topic": topic_key,
            "address": address,
            "address_hash": address_hash,
            "secret_hash": secret_hash,
            "key": idempotency_key,
        },
    )
    fetched = cursor.fetchone()
    assert fetched is not None  # one row whatever matched
    row = _from_sqlite(fetched) if sqlite else fetched
    at = _CONTACT_AT
    return ApiChangeState(
        topic=None if row[0] is None else TopicRow(*row[:at]),
        contact_row_id=row[at],
        public_id=row[at + 1],
        address_erased=bool(row[at + 2]),
        subscription=None
        if row[at + 3] is None
        else (row[at + 3], row[at + 4], row[at + 5], row[at + 6]),
        suppression=None if row[at + 7] is None else (row[at + 7], row[at + 8], row[at + 9]),
        stored_answer=None
        if row[at + 10] is None
        else StoredAnswer(request_hash=row[at + 10], status_code=row[at + 11], body=row[at + 12]),
        caller=caller_of_row(*row[at + 13 : at + 16]),
    )


@dataclass(frozen=True, slots=True)
class StateQuery:
    """What `read_api_state` is asked: the change of `address` (normalised) and `topic_key`
    (None: all marketing); `address_hash`: its keyed hash (the erased check); `secret_hash`:
    the hash of the caller's bearer secret (apikeys.service.hash_secret); `idempotency_key`:
    the request's, if any."""

    topic_key: str | None
    address: str
    address_hash: str
    secret_hash: str
    idempotency_key: str | None


def read_state(cursor: Any, query: StateQuery, *, sqlite: bool) -> ApiChangeState:
    """`read_api_state` of `query`."""
    return read_api_state(
        cursor,
        topic_key=query.topic_key,
        address=query.address,
        address_hash=query.address_hash,
        secret_hash=query.secret_hash,
        idempotency_key=query.idempotency_key,
        sqlite=sqlite,
    )
