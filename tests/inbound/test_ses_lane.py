"""The SNS lane (inbound.ses_lane, inbound.ses_record): that it writes exactly what the
route's path (inbound.receive.record_ses) writes, row for row, event for event and delivery
for delivery, from every starting state of a bounce or a complaint; that it leaves to that
path what it cannot guard (an unknown or erased address, a row that moved on between its read
and its write) having written nothing; that a duplicate is answered as one; and that it never
keeps a receipt without its event.

PostgreSQL has the lane; on SQLite every notification takes the route, which the end-to-end
tests check on both engines with the same answers (tests/inbound/conftest.py lets the lane
record from the first notification).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from prefcenter.app import create_app
from prefcenter.audit.keys import AuditKeys
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database, utcnow
from prefcenter.driver import DriverCursor
from prefcenter.inbound import ses_record
from prefcenter.inbound.events import InboundEvent
from prefcenter.inbound.receive import InboundState
from prefcenter.inbound.schemas import InboundReport
from prefcenter.metrics import instruments
from prefcenter.settings import Settings
from tests.inbound.esp import SnsSigner, fixture, now_text
from tests.inbound.helpers import subscribe, written
from tests.inbound.lane_helpers import (
    FAST,
    SLOW,
    bounce,
    complaint,
    lane,
    route,
    rows,
)
from tests.support.factories import (
    Headers,
    audit_events,
    audit_head_seq,
    lookup,
    make_topic,
    record_change,
)
from tests.webhooks.helpers import create_endpoint, deliveries


@pytest.fixture
def lane_client(settings: Settings, sns: SnsSigner) -> Iterator[TestClient]:
    """The app with an endpoint that wants every event (on a private address, allowed)."""
    allowing = settings.model_copy(update={"webhooks_allow_private": True})
    app = create_app(allowing)
    app.state.inbound = InboundState.from_settings(allowing, fetch=sns.fetch, confirm=print)
    app.state.inbound.forget_due()
    with TestClient(app) as client:
        yield client


@pytest.fixture
def contacts(lane_client: TestClient, admin_headers: Headers) -> None:
    create_endpoint(lane_client, admin_headers, "http://127.0.0.1:9/hooks")
    make_topic(lane_client, admin_headers, "newsletter")
    for address in (FAST, SLOW):
        subscribe(lane_client, admin_headers, address, "newsletter")


def _postgres_only(database: Database) -> None:
    if database.settings.is_sqlite:
        pytest.skip("SQLite takes the route; the lane's statements are PostgreSQL's")


@dataclass(frozen=True)
class Case:
    # What each contact went through first (through the route): notifications and API calls.
    before: list[Callable[[TestClient, Headers, SnsSigner, str], None]]
    last: Callable[[str, str], dict[str, Any]]  # (address, the time of now) → SES content
    lane: bool = True  # whether the lane records it (else it leaves it to the route)


def _notified(content: Callable[[str, str], dict[str, Any]]) -> Any:
    def step(client: TestClient, _: Headers, sns: SnsSigner, address: str) -> None:
        message = json.dumps(sns.notification(content(address, now_text()))).encode()
        response = client.post("/v1/inbound/ses", content=message)
        assert response.status_code == 200, response.text

    return step


def _lifted(client: TestClient, headers: Headers, _: SnsSigner, address: str) -> None:
    contact_id = lookup(client, headers, address)[0]["contact_id"]
    response = client.request(
        "DELETE", f"/v1/contacts/{contact_id}/bounce", headers=headers, json={"reason": "ok"}
    )
    assert response.status_code == 200, response.text


def _by_api(status: str) -> Any:
    def step(client: TestClient, headers: Headers, _: SnsSigner, address: str) -> None:
        record_change(client, headers, address, status)

    return step


def _soft(day: str) -> Callable[[str, str], dict[str, Any]]:
    return lambda a, _: bounce(a, permanent=False, at=f"2016-01-{day}T10:00:00.000Z")


CASES: dict[str, Case] = {
    "hard-bounce": Case([], bounce),
    "soft-bounce-counted": Case([], _soft("20")),
    "soft-bounce-counted-again": Case([_notified(_soft("20"))], _soft("21")),
    "third-soft-bounce-bounces": Case(
        [_notified(_soft("20")), _notified(_soft("21"))], _soft("22")
    ),
    "soft-bounce-outside-the-window": Case([_notified(_soft("01"))], _soft("20")),
    "bounced-already": Case([_notified(bounce)], bounce),
    "soft-after-hard": Case([_notified(bounce)], _soft("22")),
    "bounce-dated-before-its-lift": Case([_notified(bounce), _lifted], bounce),
    "complaint": Case([], complaint),
    "complaint-again": Case([_notified(complaint)], complaint),
    "complaint-after-an-api-opt-out": Case([_by_api("unsubscribed")], complaint),
    "complaint-after-a-lifted-opt-out": Case(
        [_by_api("unsubscribed"), _by_api("subscribed")], complaint
    ),
    "complaint-of-a-bounced-address": Case([_notified(bounce)], complaint),
    # Dated before the API client's newer change: superseded, which the route records.
    "complaint-older-than-a-lifted-opt-out": Case(
        [_by_api("unsubscribed"), _by_api("subscribed")],
        lambda a, _: complaint(a, "2016-01-01T10:00:00.000Z"),
        lane=False,
    ),
}


def _complaints_counted(outcome: str) -> float:
    value: float = instruments().consent_changes.labels("complaint", outcome)._value.get()
    return value


@pytest.mark.parametrize("name", list(CASES))
def test_the_lane_writes_what_the_route_writes(
    name: str,
    lane_client: TestClient,
    admin_headers: Headers,
    database: Database,
    sns: SnsSigner,
    contacts: None,
) -> None:
    _postgres_only(database)
    case = CASES[name]
    for address in (FAST, SLOW):
        for step in case.before:
            step(lane_client, admin_headers, sns, address)
    stamp = now_text()
    now = utcnow()
    head = audit_head_seq(database)
    hooks = len(deliveries(database))
    fast = sns.notification(case.last(FAST, stamp))
    slow = sns.notification(case.last(SLOW, stamp))
    counted = {o: _complaints_counted(o) for o in ("applied", "unchanged", "superseded")}

    fast_answer = lane(lane_client, database, fast, now=now)
    if not case.lane:
        assert fast_answer is None
        assert audit_head_seq(database) == head  # nothing written: the route's turn
        fast_answer = route(lane_client, database, fast, now=now)
    slow_answer = route(lane_client, database, slow, now=now)

    assert fast_answer == slow_answer == ses_record._RECORDED
    assert audit_head_seq(database) == head + 2
    fast_event, slow_event = audit_events(database)[-2:]

    def facts(found: Any) -> dict[str, Any]:
        out: dict[str, Any] = found.model_dump(exclude={"id", "seq", "contact_id", "recorded_at"})
        out["evidence"].pop("esp_event_id")  # the SNS MessageId
        return out

    assert facts(fast_event) == facts(slow_event)
    assert rows(database, FAST, now) == rows(database, SLOW, now)
    queued = [(d.cause_event_id, d.payload["type"]) for d in deliveries(database)[hooks:]]
    fast_types = [kind for cause, kind in queued if cause == fast_event.id]
    assert fast_types == [kind for cause, kind in queued if cause == slow_event.id]
    assert len(queued) == 2 * len(fast_types)
    # A complaint is counted as a consent change by either path, with the same labels.
    if fast_event.kind == "global_consent_change":
        assert _complaints_counted(fast_event.outcome) == counted[fast_event.outcome] + 2
    else:
        assert {o: _complaints_counted(o) for o in counted} == counted
    # Each is a duplicate the second time, on either path.
    assert lane(lane_client, database, slow, now=now) == ses_record._DUPLICATE
    assert route(lane_client, database, fast, now=now) == ses_record._DUPLICATE
    assert audit_head_seq(database) == head + 2
    result = verify_ledger(database, AuditKeys.from_settings(database.settings), deep=True)
    assert result.ok, result


def _lane_asked(monkeypatch: pytest.MonkeyPatch) -> list[InboundReport | None]:
    """What the lane answered, each time it was asked to record."""
    answers: list[InboundReport | None] = []
    real = ses_record.record_on_cursor

    def record(cursor: DriverCursor, event: InboundEvent, **fields: Any) -> Any:
        answers.append(real(cursor, event, **fields))
        return answers[-1]

    monkeypatch.setattr(ses_record, "record_on_cursor", record)
    return answers


def _post(client: TestClient, message: dict[str, Any]) -> Any:
    response = client.post("/v1/inbound/ses", content=json.dumps(message).encode())
    assert response.status_code == 200, response.text
    return response.json()


def test_over_http_the_lane_records_on_postgresql_and_the_route_on_sqlite(
    lane_client: TestClient,
    database: Database,
    sns: SnsSigner,
    contacts: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _lane_asked(monkeypatch)
    first = sns.notification(complaint(FAST))
    ignored = {"events": 1, "recorded": 0, "duplicates": 0, "ignored": 1, "unknown_addresses": 0}
    # The first one fetches the certificate: the route does, as the lane never fetches.
    assert _post(lane_client, sns.notification(fixture("ses_delivery.json"))) == ignored
    answers = [
        _post(lane_client, first),
        _post(lane_client, sns.notification(bounce(SLOW))),
        _post(lane_client, first),
        _post(lane_client, sns.notification(fixture("ses_delivery.json"))),
    ]
    assert answers == [
        {"events": 1, "recorded": 1, "duplicates": 0, "ignored": 0, "unknown_addresses": 0},
        {"events": 1, "recorded": 1, "duplicates": 0, "ignored": 0, "unknown_addresses": 0},
        {"events": 1, "recorded": 0, "duplicates": 1, "ignored": 0, "unknown_addresses": 0},
        {"events": 1, "recorded": 0, "duplicates": 0, "ignored": 1, "unknown_addresses": 0},
    ]
    if database.settings.is_sqlite:
        assert asked == []
    else:
        duplicate = ses_record._DUPLICATE
        assert asked == [ses_record._RECORDED, ses_record._RECORDED, duplicate]


def test_unknown_and_erased_addresses_go_the_routes_way_having_written_nothing(
    lane_client: TestClient,
    admin_headers: Headers,
    database: Database,
    sns: SnsSigner,
    contacts: None,
) -> None:
    _postgres_only(database)
    contact_id = lookup(lane_client, admin_headers, SLOW)[0]["contact_id"]
    erased = lane_client.delete(f"/v1/contacts/{contact_id}", headers=admin_headers)
    assert erased.status_code == 200, erased.text
    before = written(database)
    for address in ("stranger@example.com", SLOW, "not an address"):
        assert lane(lane_client, database, sns.notification(bounce(address)), now=utcnow()) is None
        assert written(database) == before


def test_a_row_that_moved_on_after_the_read_keeps_no_receipt_and_no_event(
    lane_client: TestClient,
    database: Database,
    sns: SnsSigner,
    contacts: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another bounce committed between the lane's read and its write: the write's
    compare-and-set finds the row changed, and the statement fails whole, receipt included;
    the route then records the notification (the app's path)."""
    _postgres_only(database)
    _post(lane_client, sns.notification(bounce(FAST, permanent=False)))
    before = written(database)
    message = sns.notification(bounce(FAST, permanent=False, at="2016-01-21T10:00:00.000Z"))
    real_read = ses_record._read

    def read_then_change(cursor: DriverCursor, **fields: Any) -> Any:
        found = real_read(cursor, **fields)
        with database.transaction(write=True) as session:
            session.execute(text("UPDATE bounce SET soft_bounces = '' WHERE TRUE"))
        return found

    monkeypatch.setattr(ses_record, "_read", read_then_change)
    assert lane(lane_client, database, message, now=utcnow()) is None
    assert written(database) == before
    monkeypatch.setattr(ses_record, "_read", real_read)
    assert _post(lane_client, message)["recorded"] == 1
    assert written(database)["InboundReceipt"] == before["InboundReceipt"] + 1
    assert written(database)["AuditEvent"] == before["AuditEvent"] + 1


def test_a_duplicate_claimed_between_the_read_and_the_write_is_answered_as_one(
    lane_client: TestClient,
    database: Database,
    sns: SnsSigner,
    contacts: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _postgres_only(database)
    message = sns.notification(complaint(FAST))
    real_read = ses_record._read

    def read_then_deliver_again(cursor: DriverCursor, **fields: Any) -> Any:
        found = real_read(cursor, **fields)
        route(lane_client, database, message, now=utcnow())
        return found

    monkeypatch.setattr(ses_record, "_read", read_then_deliver_again)
    head = audit_head_seq(database)
    assert lane(lane_client, database, message, now=utcnow()) == ses_record._DUPLICATE
    assert audit_head_seq(database) == head + 1  # the route's event alone


def test_a_refused_message_is_refused_by_the_route_as_before(
    lane_client: TestClient, database: Database, sns: SnsSigner, contacts: None
) -> None:
    message = sns.notification(complaint(FAST))
    signature = message["Signature"]
    # Another first character (a signature that happens to start with "A" would otherwise
    # stay valid: one run in 64 answered 200).
    message["Signature"] = ("B" if signature[0] == "A" else "A") + signature[1:]
    before = written(database)
    response = lane_client.post("/v1/inbound/ses", content=json.dumps(message).encode())
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert written(database) == before
