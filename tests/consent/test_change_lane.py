"""The lane of `POST /v1/consents` (consent.change_lane, consent.ledger.api_lane): that it
writes exactly what the locking path (consent.service) writes, row for row and event for
event, from every starting state; that it leaves to that path what it cannot guard; and that
nothing that moved on between its read and its write is ever overwritten.

PostgreSQL has the lane; on SQLite every change takes the locking path, which the same
comparisons check there (the lane's answer is the locking path's by construction).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest
from fastapi import Response
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import col, select

from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent import change_lane, service
from prefcenter.consent.ledger.api_lane import read_api_state
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.driver import DriverCursor
from prefcenter.idempotency import IdempotentCall
from prefcenter.metrics import instruments
from prefcenter.settings import Settings, parse_signing_keys
from prefcenter.topics.models import Topic
from tests.notices.reconsent_helpers import bound_topic
from tests.support.factories import (
    Headers,
    audit_events,
    audit_head_seq,
    make_topic,
    record_change,
    row_counts,
)
from tests.support.harness import TEST_SIGNING_KEYS, make_settings
from tests.webhooks.helpers import create_endpoint, deliveries

RING = parse_signing_keys(TEST_SIGNING_KEYS)
CALLER = Caller(key_id=7, name="crm", scopes=frozenset({Scope.CONSENT_WRITE}))
REQUEST = RequestContext("192.0.2.1", "ua", None)


@pytest.fixture
def settings(database_url: str) -> Settings:
    # An endpoint on a private address, so that every change queues its deliveries.
    return make_settings(database_url, webhooks_allow_private=True)


@pytest.fixture
def topics(client: TestClient, admin_headers: Headers) -> None:
    make_topic(client, admin_headers, "newsletter")
    make_topic(client, admin_headers, "digest", double_opt_in=True)
    make_topic(client, admin_headers, "orders", kind="transactional")
    create_endpoint(client, admin_headers, "http://127.0.0.1:9/hooks")


def _lane(
    database: Database,
    change: ConsentChangeIn,
    *,
    now: datetime,
    idempotency: IdempotentCall | None = None,
) -> Any:
    """The lane's work on a connection at `now`: its answer, a stored answer, or None."""
    keys = AuditKeys.from_settings(database.settings)

    def work(cursor: DriverCursor) -> Any:
        return change_lane._record(
            cursor,
            change,
            caller=CALLER,
            idempotency=idempotency or IdempotentCall(key=None, request_hash="h"),
            request=REQUEST,
            settings=database.settings,
            ring=RING,
            keys=keys,
            now=now,
        )

    return database.on_connection(work)


def _locking_path(database: Database, change: ConsentChangeIn, *, now: datetime) -> Any:
    keys = AuditKeys.from_settings(database.settings)
    with database.transaction(write=True) as session:
        return service.record_change(
            session,
            change,
            caller=CALLER,
            request=REQUEST,
            settings=database.settings,
            ring=RING,
            keys=keys,
            now=now,
        )


def _change(address: str, status: str, topic: str | None, **fields: Any) -> ConsentChangeIn:
    body: dict[str, Any] = {"email": address, "status": status, "source": "crm", **fields}
    if topic is not None:
        body["topic"] = topic
    return ConsentChangeIn.model_validate(body)


def _state(database: Database, address: str, since: datetime) -> dict[str, Any]:
    """The contact's rows as comparable facts, times as "at or after `since`"."""
    with database.transaction(write=False) as session:
        contact = session.exec(select(Contact).where(Contact.address == address)).first()
        if contact is None:
            return {}
        subscriptions = session.exec(
            select(Topic.key, Subscription)
            .join(Topic, col(Topic.id) == col(Subscription.topic_id))
            .where(Subscription.contact_id == contact.id)
            .order_by(col(Topic.key))
        ).all()
        suppression = session.get(Suppression, contact.id)
        return {
            "display": contact.address_display,
            "subscriptions": [
                (key, s.status, s.occurred_at >= since, s.since >= since, s.source, s.by_recipient)
                for key, s in subscriptions
            ],
            "suppression": None
            if suppression is None
            else (
                suppression.suppressed,
                suppression.occurred_at >= since,
                suppression.since >= since,
                suppression.source,
                suppression.by_recipient,
            ),
        }


@dataclass(frozen=True)
class Case:
    before: list[tuple[str, str | None]]  # (status, topic) recorded through the API first
    change: tuple[str, str | None]
    lane: bool  # whether the lane takes it (else it leaves it to the locking path)


CASES: dict[str, Case] = {
    "new-subscribe-marketing": Case([], ("subscribed", "newsletter"), lane=True),
    "new-unsubscribe": Case([], ("unsubscribed", "newsletter"), lane=True),
    "new-double-opt-in-pending": Case([], ("subscribed", "digest"), lane=True),
    "new-transactional": Case([], ("subscribed", "orders"), lane=True),
    "new-global-opt-out": Case([], ("unsubscribed", None), lane=True),
    "new-global-lift-never-suppressed": Case([], ("subscribed", None), lane=True),
    "subscribed-opts-out": Case(
        [("subscribed", "newsletter")], ("unsubscribed", "newsletter"), lane=True
    ),
    "unsubscribed-again": Case(
        [("unsubscribed", "newsletter")], ("unsubscribed", "newsletter"), lane=True
    ),
    "transactional-again": Case([("subscribed", "orders")], ("subscribed", "orders"), lane=True),
    "suppressed-again": Case([("unsubscribed", None)], ("unsubscribed", None), lane=True),
    "suppressed-lifted-by-api": Case([("unsubscribed", None)], ("subscribed", None), lane=True),
    "known-subscribes-to-marketing": Case(
        [("unsubscribed", "orders")], ("subscribed", "newsletter"), lane=False
    ),
    "pending-confirmed-again": Case(
        [("subscribed", "digest")], ("subscribed", "digest"), lane=False
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_lane_writes_what_the_locking_path_writes(
    name: str,
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    topics: None,
) -> None:
    case = CASES[name]
    fast, slow = "fast@example.com", "slow@example.com"
    for address in (fast, slow):
        for status, topic in case.before:
            fields: dict[str, Any] = {"topic": topic} if topic else {}
            record_change(client, writer_headers, address, status, **fields)
    status, topic = case.change
    now = utcnow()
    head = audit_head_seq(database)
    hooks = len(deliveries(database))
    counted = instruments().consent_changes.labels("api_client", "applied")._value.get()

    lane = case.lane and not database.settings.is_sqlite
    if database.settings.is_sqlite:
        fast_answer = _route_lane(database, _change("Fast@Example.com", status, topic))
    else:
        fast_answer = _lane(database, _change("Fast@Example.com", status, topic), now=now)
    if not lane:
        assert fast_answer is None
        assert audit_head_seq(database) == head  # nothing written: the locking path's turn
        fast_answer = _locking_path(database, _change("Fast@Example.com", status, topic), now=now)
    slow_answer = _locking_path(database, _change("Slow@Example.com", status, topic), now=now)

    assert isinstance(fast_answer, ConsentChangeOut)
    assert audit_head_seq(database) == head + 2
    fast_event, slow_event = audit_events(database)[-2:]
    assert fast_answer.event_id == fast_event.id

    def answer(out: ConsentChangeOut) -> dict[str, Any]:
        facts = out.model_dump(exclude={"contact_id", "event_id", "email"})
        facts["confirm_url"] = facts["confirm_url"] is not None
        return facts

    assert answer(fast_answer) == answer(slow_answer)
    assert (fast_answer.email, slow_answer.email) == ("Fast@Example.com", "Slow@Example.com")

    def event(found: Any) -> dict[str, Any]:
        facts: dict[str, Any] = found.model_dump(
            exclude={"id", "seq", "contact_id", "recorded_at", "occurred_at"}
        )
        facts["occurred_at"] = found.occurred_at >= now
        return facts

    assert event(fast_event) == event(slow_event)
    fast_rows, slow_rows = _state(database, fast, now), _state(database, slow, now)
    displays = fast_rows.pop("display"), slow_rows.pop("display")
    assert fast_rows == slow_rows
    if not case.before:  # a new contact keeps the address as given
        assert displays == ("Fast@Example.com", "Slow@Example.com")
    # Each change queued its deliveries to the endpoint, the lane's in its statement.
    queued = [(d.cause_event_id, d.payload["type"]) for d in deliveries(database)[hooks:]]
    fast_types = [kind for cause, kind in queued if cause == fast_event.id]
    assert fast_types
    assert fast_types == [kind for cause, kind in queued if cause == slow_event.id]
    assert len(queued) == 2 * len(fast_types)
    if lane and fast_event.outcome == "applied":
        after = instruments().consent_changes.labels("api_client", "applied")._value.get()
        assert after == counted + 2
    result = verify_ledger(database, AuditKeys.from_settings(database.settings), deep=True)
    assert result.ok, result


def _postgres_only(database: Database) -> None:
    if database.settings.is_sqlite:
        pytest.skip("SQLite takes the locking path; the guarded statement is PostgreSQL's")


def _route_lane(database: Database, change: ConsentChangeIn) -> ConsentChangeOut | None:
    """What the route asks the lane first (consent.change_lane.record_change)."""

    async def ask() -> ConsentChangeOut | None:
        return await change_lane.record_change(
            database,
            change,
            caller=CALLER,
            idempotency=IdempotentCall(key=None, request_hash="h"),
            response=Response(),
            request=REQUEST,
            ring=RING,
            keys=AuditKeys.from_settings(database.settings),
        )

    return anyio.run(ask)


def test_sqlite_takes_the_locking_path(database: Database, topics: None) -> None:
    if not database.settings.is_sqlite:
        pytest.skip("PostgreSQL has the lane")
    rows = row_counts(database)
    assert _route_lane(database, _change("ada@example.com", "subscribed", "newsletter")) is None
    assert row_counts(database) == rows


def test_a_change_naming_a_notice_version_takes_the_locking_path(
    database: Database, topics: None
) -> None:
    rows = row_counts(database)
    change = _change("ada@example.com", "subscribed", "newsletter", notice="privacy@v1")
    assert _route_lane(database, change) is None
    assert row_counts(database) == rows


def test_a_change_of_a_topic_bound_to_a_notice_takes_the_locking_path(
    client: TestClient, admin_headers: Headers, database: Database
) -> None:
    """The version a subscription is given under is consent.ledger.changes.given_under's to
    decide; the lane leaves the change to the path that decides it."""
    bound_topic(client, admin_headers, "bound")
    rows = row_counts(database)
    assert _route_lane(database, _change("ada@example.com", "subscribed", "bound")) is None
    assert row_counts(database) == rows


def _read(database: Database, address: str, topic: str | None, key: str | None = None) -> Any:
    keys = AuditKeys.from_settings(database.settings)
    return database.on_connection(
        lambda cursor: read_api_state(
            cursor,
            topic_key=topic,
            address=address,
            address_hash=keys.address_hash(address),
            owner=CALLER.owner,
            idempotency_key=key,
        )
    )


def test_a_change_between_the_read_and_the_write_is_never_overwritten(
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lane's read, then an API change of the same row, then the lane's write: the write
    finds the row moved on and writes nothing."""
    _postgres_only(database)
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="newsletter")
    stale = _read(database, "ada@example.com", "newsletter")
    record_change(client, writer_headers, "ada@example.com", "unsubscribed", topic="newsletter")
    monkeypatch.setattr(change_lane, "read_api_state", lambda *_, **__: stale)
    head, rows = audit_head_seq(database), row_counts(database)

    later = utcnow() + timedelta(seconds=1)
    # The stale state was of `newsletter`: the write compares against it and finds it moved.
    assert (
        _lane(database, _change("ada@example.com", "unsubscribed", "newsletter"), now=later) is None
    )
    assert audit_head_seq(database) == head
    assert row_counts(database) == rows


def test_an_address_created_or_erased_meanwhile_is_not_written(
    client: TestClient,
    writer_headers: Headers,
    admin_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read while the address is new; meanwhile another request creates it, and erases it:
    the lane neither creates a second contact nor stores the erased address again."""
    _postgres_only(database)
    unread = _read(database, "ada@example.com", "newsletter")
    assert unread.contact_row_id is None
    monkeypatch.setattr(change_lane, "read_api_state", lambda *_, **__: unread)
    created = record_change(client, writer_headers, "ada@example.com", "subscribed", topic="orders")
    head, rows = audit_head_seq(database), row_counts(database)
    assert (
        _lane(database, _change("ada@example.com", "subscribed", "newsletter"), now=utcnow())
        is None
    )
    assert (audit_head_seq(database), row_counts(database)) == (head, rows)

    erased = client.delete(f"/v1/contacts/{created['contact_id']}", headers=admin_headers)
    assert erased.status_code == 200, erased.text
    head, rows = audit_head_seq(database), row_counts(database)
    assert (
        _lane(database, _change("ada@example.com", "subscribed", "newsletter"), now=utcnow())
        is None
    )
    assert (audit_head_seq(database), row_counts(database)) == (head, rows)
    with database.transaction(write=False) as session:
        stored = session.connection().execute(
            text("SELECT count(*) FROM contact WHERE address = 'ada@example.com'")
        )
        assert stored.scalar_one() == 0


def test_an_idempotency_key_stored_meanwhile_writes_nothing_and_the_retry_gets_the_first_answer(
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _postgres_only(database)
    body = {"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"}
    headers = {**writer_headers, "Idempotency-Key": "sync-42"}
    owner = client.get("/v1/topics", headers=writer_headers)  # warms the app
    assert owner.status_code == 200
    real_read = read_api_state
    # The read sees no stored answer (as if a concurrent request stored it just after).
    monkeypatch.setattr(
        change_lane,
        "read_api_state",
        lambda cursor, **fields: real_read(cursor, **{**fields, "idempotency_key": None}),
    )
    first = client.post("/v1/consents", headers=headers, json=body)
    assert first.status_code == 200, first.text
    head = audit_head_seq(database)
    # The lane's read misses the stored key; its insert of the key fails, nothing is
    # written, and the locking path answers the first answer again.
    again = client.post("/v1/consents", headers=headers, json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert audit_head_seq(database) == head
    other = client.post("/v1/consents", headers=headers, json={**body, "status": "unsubscribed"})
    assert other.status_code == 422, other.text
    assert audit_head_seq(database) == head


def test_a_retry_is_answered_from_the_lanes_read(
    client: TestClient, writer_headers: Headers, database: Database, topics: None
) -> None:
    body = {"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"}
    headers = {**writer_headers, "Idempotency-Key": "sync-43"}
    first = client.post("/v1/consents", headers=headers, json=body)
    head = audit_head_seq(database)
    again = client.post("/v1/consents", headers=headers, json=body)
    other = client.post("/v1/consents", headers=headers, json={**body, "topic": "orders"})

    assert (first.status_code, again.status_code, other.status_code) == (200, 200, 422)
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert audit_head_seq(database) == head


def test_when_the_lane_gives_way_the_locking_path_records_the_change(
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _postgres_only(database)
    gave_way: list[str] = []

    def moved_on(cursor: Any, state: Any, **fields: Any) -> bool:
        gave_way.append(fields["event"].address)
        return False

    monkeypatch.setattr(change_lane, "write_api_change", moved_on)
    answer = record_change(
        client, writer_headers, "ada@example.com", "unsubscribed", topic="newsletter"
    )
    assert gave_way == ["ada@example.com"]
    (event,) = [e for e in audit_events(database) if e.kind == "consent_change"]
    assert (answer["event_id"], event.to_status) == (event.id, "unsubscribed")
