"""The lane of `POST /v1/consents` (consent.change_lane) stores and answers the very bytes the
locking path (the app's route, consent.service) does, on both engines: the answer, the rows of
the contact, its subscription or suppression, the audit event (its canonical bytes, evidence
document and free text), the webhook deliveries and the Idempotency-Key's record, once what
differs by nature between two changes (the address, the contact's and the event's ids, the
times, the place in the chain) is masked. Times are masked to their shape, and every value
keeps its type, so a time or a boolean stored in another form shows.

On SQLite the lane writes with plain statements on the driver (consent.ledger.api_lane_sqlite),
so this is what keeps its values as SQLAlchemy would have stored them."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.audit.keys import AuditKeys
from prefcenter.consent import change_lane
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database
from prefcenter.driver import DriverCursor, driver_sql
from prefcenter.settings import Settings
from prefcenter.webhooks.queue import DELIVERY_COLUMNS
from tests.consent.test_change_lane import CASES
from tests.support.factories import Headers, make_topic, record_change
from tests.support.harness import make_settings
from tests.webhooks.helpers import create_endpoint


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


_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:\d{2})?)?")
_SEQ = re.compile(r'"seq":\d+')
# Keyed digests of what differs by nature (the evidence names the request's Idempotency-Key);
# `audit verify --deep` checks each against what it digests.
_DIGEST = re.compile(r"\b[0-9a-f]{64}\b")
# A confirmation link: its signed token names the contact and the pending event.
_TOKEN = re.compile(r"(/c/\d+\.\w+\.)([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
# Columns that differ between any two events by their place in the chain or row order.
_PLACE = {"seq", "hash", "id"}

_QUERIES = {
    "contact": "SELECT public_id, address, address_display, created_at, erased_at FROM contact"
    " WHERE public_id = %(contact)s",
    "subscription": "SELECT s.* FROM subscription AS s JOIN contact AS c ON c.id = s.contact_id"
    " WHERE c.public_id = %(contact)s ORDER BY s.topic_id",
    "suppression": "SELECT p.* FROM suppression AS p JOIN contact AS c ON c.id = p.contact_id"
    " WHERE c.public_id = %(contact)s",
    "audit_event": "SELECT * FROM audit_event WHERE contact_id = %(contact)s ORDER BY seq",
    "audit_evidence": "SELECT v.* FROM audit_evidence AS v JOIN audit_event AS e"
    " ON e.seq = v.seq WHERE e.contact_id = %(contact)s ORDER BY v.seq",
    "audit_free_text": "SELECT f.* FROM audit_free_text AS f JOIN audit_event AS e"
    " ON e.seq = f.seq WHERE e.contact_id = %(contact)s ORDER BY f.seq",
    "outbox_message": f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM outbox_message"
    " WHERE cause_event_id IN (SELECT id FROM audit_event WHERE contact_id = %(contact)s)"
    " ORDER BY id",
    "idempotency_record": "SELECT * FROM idempotency_record WHERE key = %(key)s",
}


def _stored(database: Database, contact: str, key: str) -> dict[str, list[list[str]]]:
    """Every row the contact's changes wrote, as `type:value` texts (see `_masked`)."""
    sqlite = database.settings.is_sqlite

    def read(cursor: DriverCursor) -> dict[str, list[list[str]]]:
        rows: dict[str, list[list[str]]] = {}
        for table, sql in _QUERIES.items():
            cursor.execute(driver_sql(sql, sqlite=sqlite), {"contact": contact, "key": key})
            names = [column[0] for column in cursor.description or ()]
            rows[table] = [
                [f"{name}={_typed(name, value)}" for name, value in zip(names, row, strict=True)]
                for row in cursor.fetchall()
            ]
        return rows

    return database.on_connection(read)


def _typed(name: str, value: Any) -> str:
    if isinstance(value, memoryview):
        value = bytes(value)
    kind = type(value).__name__
    if name in _PLACE or (name == "contact_id" and isinstance(value, int)):
        return f"{kind}:<{name}>"
    text = value.decode() if isinstance(value, bytes) else str(value)
    return f"{kind}:{text}"


def _token_payload(match: re.Match[str]) -> str:
    """The token's payload decoded (its identities are masked next), its signature masked."""
    payload = match.group(2)
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    # When it was issued, in seconds: two requests may fall in two seconds.
    decoded = re.sub(r'"i":\d+', '"i":<issued>', decoded)
    return f"{match.group(1)}{decoded}.<signature>"


def _masked(found: Any, identities: dict[str, str]) -> Any:
    """`found` (texts, nested in lists and dicts) with each identity replaced by its name,
    every time by its shape (its digits as 0), every event id (of this change or an earlier
    one) by `<event>`, every other digest by `<digest>` and every seq in canonical bytes by
    `<seq>`."""
    if isinstance(found, dict):
        return {key: _masked(value, identities) for key, value in found.items()}
    if isinstance(found, list):
        return [_masked(value, identities) for value in found]
    text = _TOKEN.sub(_token_payload, str(found))
    for identity, name in sorted(identities.items(), key=lambda item: -len(item[0])):
        text = text.replace(identity, name)
    text = _DIGEST.sub("<digest>", _UUID.sub("<event>", text))
    text = _TIME.sub(lambda match: re.sub(r"\d", "0", match.group()), text)
    return _SEQ.sub('"seq":<seq>', text)


@pytest.mark.parametrize("name", list(CASES))
def test_the_lane_stores_and_answers_the_bytes_of_the_locking_path(
    name: str,
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    topics: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = CASES[name]
    keys = AuditKeys.from_settings(database.settings)
    lane, app = "Lane@Example.com", "Slow@Example.com"  # the same length: so are the answers
    for address in (lane, app):
        for status, topic in case.before:
            fields: dict[str, Any] = {"topic": topic} if topic else {}
            record_change(client, writer_headers, address, status, **fields)
    status, topic = case.change
    sent: list[str] = []
    real = change_lane.record_on_cursor

    def lane_or_app(cursor: DriverCursor, change: Any, **fields: Any) -> Any:
        sent.append(change.email.given)
        return real(cursor, change, **fields) if change.email.given == lane else None

    monkeypatch.setattr(change_lane, "record_on_cursor", lane_or_app)
    answers = {}
    for address in (lane, app):
        body: dict[str, Any] = {"email": address, "status": status, "source": "crm"}
        if topic is not None:
            body["topic"] = topic
        headers = {**writer_headers, "Idempotency-Key": f"key-{address}"}
        answers[address] = client.post("/v1/consents", headers=headers, json=body)
    assert sent == [lane, app]

    found = {}
    for address, answer in answers.items():
        assert answer.status_code == 200, answer.text
        contact = answer.json()["contact_id"]
        identities = {
            contact: "<contact>",
            address: "<given>",
            address.lower(): "<address>",
            keys.address_hash(address.lower()): "<address_hash>",
            f"key-{address}": "<key>",
        }
        stored = _stored(database, contact, f"key-{address}")
        found[address] = _masked(
            {
                "answer": answer.content.decode(),
                "headers": [answer.headers["content-type"], answer.headers["content-length"]],
                "rows": stored,
            },
            identities,
        )
        assert stored["audit_event"], "no event stored"
        assert stored["idempotency_record"], "no answer stored under the key"
        if database.settings.is_sqlite:
            # As SQLAlchemy's JSON type wrote them before either path wrote them itself.
            payloads = [v for row in stored["outbox_message"] for v in row if "payload=" in v]
            assert payloads
            for payload in payloads:
                text = payload.removeprefix("payload=str:")
                assert text == json.dumps(json.loads(text)), payload
    for part in ("answer", "headers"):
        assert found[lane][part] == found[app][part], part
    for table, rows in found[lane]["rows"].items():
        assert rows == found[app]["rows"][table], table
    verified = verify_ledger(database, keys, deep=True)
    assert verified.ok, verified
