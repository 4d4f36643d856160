"""The lane of `POST /v1/consents` (consent.change_lane, consent.ledger.api_lane): that it
writes exactly what the locking path (consent.service) writes, row for row and event for
event, from every starting state; that it leaves to that path what it cannot guard; that
nothing that moved on between its read and its write is ever overwritten (a contact-wide
opt-out committed meanwhile included); and that its read of the API key refuses what the
app's key check refuses.

Both engines have the lane: on PostgreSQL its write is one guarded statement
(consent.ledger.api_lane), on SQLite plain statements in the database's write turn, which
first reads the state again (consent.ledger.api_lane_sqlite).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import col, select

from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import find_caller, hash_secret, revoke_api_key
from prefcenter.audit.context import RequestContext
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent import change_lane, service
from prefcenter.consent.ledger import api_lane_sqlite
from prefcenter.consent.ledger.api_state import read_api_state
from prefcenter.consent.ledger.changes import ChangeRecord
from prefcenter.consent.ledger.orm import apply_change
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import ActorKind, RequestedChange, Status
from prefcenter.consent.schemas import ConsentChangeIn, ConsentChangeOut
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.driver import DriverCursor
from prefcenter.idempotency import IdempotentCall
from prefcenter.metrics import instruments
from prefcenter.settings import Settings, parse_signing_keys
from prefcenter.sqlite_writers import writer_turn
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
from tests.support.harness import TEST_SIGNING_KEYS, issue_key, make_settings
from tests.webhooks.helpers import create_endpoint, deliveries

RING = parse_signing_keys(TEST_SIGNING_KEYS)
REQUEST = RequestContext("192.0.2.1", "ua", None)


@dataclass(frozen=True)
class Writer:
    """The `writer_headers` key, as the locking path and the lane take it."""

    caller: Caller
    secret_hash: str


@pytest.fixture
def writer(database: Database, writer_headers: Headers) -> Writer:
    secret = writer_headers["Authorization"].removeprefix("Bearer ")
    with database.transaction(write=False) as session:
        caller = find_caller(session, secret)
    assert caller is not None
    return Writer(caller, hash_secret(secret))


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
    writer: Writer,
    *,
    now: datetime,
    idempotency: IdempotentCall | None = None,
) -> Any:
    """The lane's work on a connection at `now`: its answer, a stored answer, or None."""
    keys = AuditKeys.from_settings(database.settings)

    def work(cursor: DriverCursor) -> Any:
        return change_lane.record_on_cursor(
            cursor,
            change,
            secret_hash=writer.secret_hash,
            idempotency=idempotency or IdempotentCall(key=None, request_hash="h"),
            request=REQUEST,
            settings=database.settings,
            ring=RING,
            keys=keys,
            now=now,
        )

    return database.on_connection(work)


def _locking_path(database: Database, change: ConsentChangeIn, writer: Writer) -> Any:
    keys = AuditKeys.from_settings(database.settings)
    with database.transaction(write=True) as session:
        return service.record_change(
            session,
            change,
            caller=writer.caller,
            request=REQUEST,
            settings=database.settings,
            ring=RING,
            keys=keys,
            now=utcnow(),
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
    # A known contact's subscription to a marketing topic reads its contact-wide opt-out:
    # none, one an API client made, one lifted since.
    "known-subscribes-to-marketing": Case(
        [("unsubscribed", "orders")], ("subscribed", "newsletter"), lane=True
    ),
    "known-resubscribes-to-marketing": Case(
        [("unsubscribed", "newsletter")], ("subscribed", "newsletter"), lane=True
    ),
    "suppressed-by-api-subscribes-to-marketing": Case(
        [("unsubscribed", None)], ("subscribed", "newsletter"), lane=True
    ),
    "lifted-subscribes-to-marketing": Case(
        [("unsubscribed", None), ("subscribed", None)], ("subscribed", "newsletter"), lane=True
    ),
    "known-subscribes-to-double-opt-in": Case(
        [("subscribed", "orders")], ("subscribed", "digest"), lane=True
    ),
    "pending-asked-again": Case([("subscribed", "digest")], ("subscribed", "digest"), lane=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_lane_writes_what_the_locking_path_writes(
    name: str,
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
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

    lane = case.lane
    fast_answer = _lane(database, _change("Fast@Example.com", status, topic), writer, now=now)
    if not lane:
        assert fast_answer is None
        assert audit_head_seq(database) == head  # nothing written: the locking path's turn
        fast_answer = _locking_path(database, _change("Fast@Example.com", status, topic), writer)
    slow_answer = _locking_path(database, _change("Slow@Example.com", status, topic), writer)

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
        pytest.skip("PostgreSQL's row locks; SQLite's write turn reads the state again")


def _lane_asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses the lane was asked to record (it reads before it decides anything)."""
    asked: list[str] = []
    real = change_lane.record_on_cursor

    def record(cursor: DriverCursor, change: ConsentChangeIn, **fields: Any) -> Any:
        asked.append(change.email.normalised)
        return real(cursor, change, **fields)

    monkeypatch.setattr(change_lane, "record_on_cursor", record)
    return asked


def test_a_change_naming_a_notice_version_takes_the_locking_path(
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _lane_asked(monkeypatch)
    rows = row_counts(database)
    body = {"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"}
    answer = client.post(
        "/v1/consents", headers=writer_headers, json={**body, "notice": "privacy@v1"}
    )
    assert answer.status_code == 422, answer.text  # the app's: no such notice
    assert asked == []
    assert row_counts(database) == rows


def test_a_change_of_a_topic_bound_to_a_notice_takes_the_locking_path(
    client: TestClient, admin_headers: Headers, database: Database, writer: Writer
) -> None:
    """The version a subscription is given under is consent.ledger.changes.given_under's to
    decide; the lane leaves the change to the path that decides it."""
    bound_topic(client, admin_headers, "bound")
    rows = row_counts(database)
    change = _change("ada@example.com", "subscribed", "bound")
    assert _lane(database, change, writer, now=utcnow()) is None
    assert row_counts(database) == rows


def _read(
    database: Database, writer: Writer, address: str, topic: str | None, key: str | None = None
) -> Any:
    keys = AuditKeys.from_settings(database.settings)
    return database.on_connection(
        lambda cursor: read_api_state(
            cursor,
            topic_key=topic,
            address=address,
            address_hash=keys.address_hash(address),
            secret_hash=writer.secret_hash,
            idempotency_key=key,
            sqlite=database.settings.is_sqlite,
        )
    )


def test_a_change_between_the_read_and_the_write_is_never_overwritten(
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lane's read, then an API change of the same row, then the lane's write: the write
    finds the row moved on and writes nothing."""
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="newsletter")
    stale = _read(database, writer, "ada@example.com", "newsletter")
    record_change(client, writer_headers, "ada@example.com", "unsubscribed", topic="newsletter")
    monkeypatch.setattr(change_lane, "read_api_state", lambda *_, **__: stale)
    head, rows = audit_head_seq(database), row_counts(database)

    later = utcnow() + timedelta(seconds=1)
    # The stale state was of `newsletter`: the write compares against it and finds it moved.
    assert (
        _lane(database, _change("ada@example.com", "unsubscribed", "newsletter"), writer, now=later)
        is None
    )
    assert audit_head_seq(database) == head
    assert row_counts(database) == rows


def test_an_address_created_or_erased_meanwhile_is_not_written(
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    admin_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read while the address is new; meanwhile another request creates it, and erases it:
    the lane neither creates a second contact nor stores the erased address again."""
    unread = _read(database, writer, "ada@example.com", "newsletter")
    assert unread.contact_row_id is None
    monkeypatch.setattr(change_lane, "read_api_state", lambda *_, **__: unread)
    created = record_change(client, writer_headers, "ada@example.com", "subscribed", topic="orders")
    head, rows = audit_head_seq(database), row_counts(database)
    assert (
        _lane(
            database, _change("ada@example.com", "subscribed", "newsletter"), writer, now=utcnow()
        )
        is None
    )
    assert (audit_head_seq(database), row_counts(database)) == (head, rows)

    erased = client.delete(f"/v1/contacts/{created['contact_id']}", headers=admin_headers)
    assert erased.status_code == 200, erased.text
    head, rows = audit_head_seq(database), row_counts(database)
    assert (
        _lane(
            database, _change("ada@example.com", "subscribed", "newsletter"), writer, now=utcnow()
        )
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
    gave_way: list[str] = []

    def moved_on(cursor: Any, state: Any, **fields: Any) -> bool:
        gave_way.append(fields["event"].address)
        return False

    monkeypatch.setattr(change_lane, "write_api_change", moved_on)
    monkeypatch.setattr(change_lane, "write_api_change_sqlite", moved_on)
    answer = record_change(
        client, writer_headers, "ada@example.com", "unsubscribed", topic="newsletter"
    )
    assert gave_way == ["ada@example.com"]
    (event,) = [e for e in audit_events(database) if e.kind == "consent_change"]
    assert (answer["event_id"], event.to_status) == (event.id, "unsubscribed")


def test_an_opt_out_of_all_marketing_committed_between_the_read_and_the_write_is_kept(
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A known contact's subscription to a marketing topic is decided on its contact-wide
    opt-out: read while there is none, then the person opts out of all marketing, then the
    lane's write: it finds the suppression and writes nothing; the locking path then refuses
    the subscription, as it would have had the opt-out come first."""
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="orders")
    stale = _read(database, writer, "ada@example.com", "newsletter")
    assert stale.contact_row_id is not None
    assert stale.suppression is None
    _opt_out_of_all_by_the_person(database, "ada@example.com")
    monkeypatch.setattr(change_lane, "read_api_state", lambda *_, **__: stale)
    head, rows = audit_head_seq(database), row_counts(database)

    change = _change("ada@example.com", "subscribed", "newsletter")
    assert _lane(database, change, writer, now=utcnow()) is None
    assert (audit_head_seq(database), row_counts(database)) == (head, rows)
    monkeypatch.undo()
    refused = client.post(
        "/v1/consents",
        headers=writer_headers,
        json={"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"},
    )
    assert refused.status_code == 409, refused.text
    assert (audit_head_seq(database), row_counts(database)) == (head, rows)


def test_a_lifted_opt_out_made_again_between_the_read_and_the_write_is_kept(
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with a suppression row that exists: read while lifted, opted out again by the
    person before the write."""
    record_change(client, writer_headers, "ada@example.com", "unsubscribed")
    record_change(client, writer_headers, "ada@example.com", "subscribed")
    stale = _read(database, writer, "ada@example.com", "newsletter")
    assert stale.suppression is not None
    assert stale.suppression[0] is False
    _opt_out_of_all_by_the_person(database, "ada@example.com")
    monkeypatch.setattr(change_lane, "read_api_state", lambda *_, **__: stale)
    head, rows = audit_head_seq(database), row_counts(database)

    change = _change("ada@example.com", "subscribed", "newsletter")
    assert _lane(database, change, writer, now=utcnow()) is None
    assert (audit_head_seq(database), row_counts(database)) == (head, rows)


def test_an_opt_out_committed_while_the_write_waits_for_the_contact_is_kept(
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    database: Database,
    topics: None,
) -> None:
    """The race one statement cannot guard: another transaction holds the contact's lock
    and writes the suppression; the lane's write waits for that lock; then the other commits.
    A statement whose snapshot was taken before the lock was granted would not see the new
    row and would subscribe the person; the lane's write sees it and writes nothing."""
    _postgres_only(database)
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="orders")
    head = audit_head_seq(database)
    with database.engine.connect() as other:
        other.execute(text("SELECT id FROM contact WHERE address = 'ada@example.com' FOR UPDATE"))
        other.execute(
            text(
                "INSERT INTO suppression (contact_id, suppressed, occurred_at, since, source,"
                " by_recipient) SELECT id, true, now(), now(), 'one_click', true FROM contact"
                " WHERE address = 'ada@example.com'"
            )
        )
        answers: list[Any] = []
        change = _change("ada@example.com", "subscribed", "newsletter")
        lane = threading.Thread(
            target=lambda: answers.append(_lane(database, change, writer, now=utcnow()))
        )
        lane.start()
        _wait_for_a_lock_wait(database)
        other.commit()
    lane.join()
    assert answers == [None]
    assert audit_head_seq(database) == head
    with database.transaction(write=False) as session:
        subscribed = session.connection().execute(
            text(
                "SELECT count(*) FROM subscription s JOIN topic t ON t.id = s.topic_id"
                " WHERE t.key = 'newsletter'"
            )
        )
        assert subscribed.scalar_one() == 0


def test_an_opt_out_committed_while_the_write_waits_for_its_turn_is_kept(
    client: TestClient,
    writer_headers: Headers,
    writer: Writer,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite's form of the same race: another writer holds the write turn and writes the
    suppression; the lane reads (the suppression not committed yet), decides, and waits for
    the turn; then the other commits. The lane's write, reading the state again in its turn,
    finds the suppression and writes nothing."""
    if not database.settings.is_sqlite:
        pytest.skip("SQLite's write turn; PostgreSQL's row locks are the test above")
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="orders")
    head = audit_head_seq(database)
    waiting = threading.Event()

    @contextmanager
    def turn(settings: Settings) -> Iterator[None]:
        waiting.set()
        with writer_turn(settings):
            yield

    monkeypatch.setattr(api_lane_sqlite, "writer_turn", turn)
    answers: list[Any] = []
    change = _change("ada@example.com", "subscribed", "newsletter")
    lane = threading.Thread(
        target=lambda: answers.append(_lane(database, change, writer, now=utcnow()))
    )
    with database.transaction(write=True) as session:
        session.connection().execute(
            text(
                "INSERT INTO suppression (contact_id, suppressed, occurred_at, since, source,"
                " by_recipient) SELECT id, true, :now, :now, 'one_click', true FROM contact"
                " WHERE address = 'ada@example.com'"
            ),
            {"now": "2026-01-01 00:00:00.000000"},
        )
        lane.start()
        assert waiting.wait(10), "the lane never asked for the write turn"
    lane.join()
    assert answers == [None]
    assert audit_head_seq(database) == head
    with database.transaction(write=False) as session:
        subscribed = session.connection().execute(
            text(
                "SELECT count(*) FROM subscription s JOIN topic t ON t.id = s.topic_id"
                " WHERE t.key = 'newsletter'"
            )
        )
        assert subscribed.scalar_one() == 0


def _opt_out_of_all_by_the_person(database: Database, address: str) -> None:
    """The person's own opt-out of all marketing, as the preference page records it."""
    with database.transaction(write=True) as session:
        contact = session.exec(select(Contact).where(Contact.address == address)).one()
        apply_change(
            session,
            contact=contact,
            topic=None,
            requested=RequestedChange(
                status=Status.UNSUBSCRIBED,
                occurred_at=utcnow(),
                actor=ActorKind.RECIPIENT,
                source="preference_page",
            ),
            record=ChangeRecord(actor="recipient", source="preference_page"),
            now=utcnow(),
        )


def _wait_for_a_lock_wait(database: Database) -> None:
    """Until some session of this database waits for a row lock (the lane's write)."""
    for _ in range(500):
        with database.engine.connect() as probe:
            waiting = probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("the lane's write never waited for the contact's lock")


def test_a_revoked_key_is_refused_on_its_next_change(
    client: TestClient, database: Database, topics: None
) -> None:
    headers = issue_key(database, Scope.CONSENT_WRITE, name="sync")
    body = {"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"}
    assert client.post("/v1/consents", headers=headers, json=body).status_code == 200
    with database.transaction(write=False) as session:
        caller = find_caller(session, headers["Authorization"].removeprefix("Bearer "))
    assert caller is not None
    with database.transaction(write=True) as session:
        revoke_api_key(session, key_id=caller.key_id)
    head = audit_head_seq(database)
    refused = client.post("/v1/consents", headers=headers, json={**body, "status": "unsubscribed"})
    assert refused.status_code == 401, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert audit_head_seq(database) == head


def test_unknown_keys_and_keys_without_the_scope_are_refused(
    client: TestClient, reader_headers: Headers, database: Database, topics: None
) -> None:
    body = {"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"}
    head = audit_head_seq(database)
    unknown = {"Authorization": "Bearer pck_" + "x" * 43}
    assert client.post("/v1/consents", headers=unknown, json=body).status_code == 401
    assert client.post("/v1/consents", headers=reader_headers, json=body).status_code == 403
    assert client.post("/v1/consents", json=body).status_code == 401
    assert audit_head_seq(database) == head


def test_a_stored_answer_is_given_only_to_the_key_that_stored_it(
    client: TestClient, writer_headers: Headers, database: Database, topics: None
) -> None:
    """Two callers' Idempotency-Keys never collide: another key with the same key and body
    gets its own change, not the first caller's answer."""
    other = issue_key(database, Scope.CONSENT_WRITE, name="other")
    body = {"email": "ada@example.com", "status": "subscribed", "topic": "newsletter"}
    first = client.post(
        "/v1/consents", headers={**writer_headers, "Idempotency-Key": "k-1"}, json=body
    )
    second = client.post("/v1/consents", headers={**other, "Idempotency-Key": "k-1"}, json=body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers.get("Idempotent-Replayed") is None
    assert second.json()["event_id"] != first.json()["event_id"]
