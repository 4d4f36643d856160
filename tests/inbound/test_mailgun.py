"""Mailgun's webhooks: signatures made with a test signing key; every flipped byte of body,
signature, token or timestamp refused; an old timestamp refused; a token seen before is a
replay (406, which Mailgun does not retry)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.db import Database
from tests.inbound.esp import fixture, mailgun_signed
from tests.inbound.helpers import bounce_row, eligibility, subscribe, written
from tests.support.factories import Headers, assert_problem, make_topic


def post(client: TestClient, payload: dict[str, Any] | bytes) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(
        "/v1/inbound/mailgun", content=body, headers={"Content-Type": "application/json"}
    )


@pytest.fixture
def alice(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, "newsletter")
    subscribe(client, admin_headers, "alice@example.com", "newsletter")
    return "alice@example.com"


def test_a_permanent_failure_bounces_the_address(
    client: TestClient, admin_headers: Headers, database: Database, alice: str
) -> None:
    response = post(client, mailgun_signed(fixture("mailgun_failed_permanent.json")))
    assert response.status_code == 200, response.text
    assert eligibility(client, admin_headers, "newsletter", alice) == ["bounced"]
    row = bounce_row(database, alice)
    assert row is not None
    assert row.source == "mailgun"


def test_a_temporary_failure_is_counted_and_the_third_bounces(
    client: TestClient, admin_headers: Headers, alice: str
) -> None:
    sample = fixture("mailgun_failed_permanent.json")
    sample["event-data"]["severity"] = "temporary"
    for n in range(3):
        sample["event-data"]["id"] = f"temporary-{n}"
        sample["event-data"]["timestamp"] = datetime.now(UTC).timestamp() - 3600 * (3 - n)
        assert post(client, mailgun_signed(sample)).status_code == 200
        expected = "bounced" if n == 2 else "subscribed"
        assert eligibility(client, admin_headers, "newsletter", alice) == [expected]


def test_a_complaint_and_an_unsubscribe_opt_the_address_out(
    client: TestClient, admin_headers: Headers, alice: str
) -> None:
    assert post(client, mailgun_signed(fixture("mailgun_unsubscribed.json"))).status_code == 200
    assert eligibility(client, admin_headers, "newsletter", alice) == ["suppressed"]
    assert post(client, mailgun_signed(fixture("mailgun_complained.json"))).status_code == 200
    assert eligibility(client, admin_headers, "newsletter", alice) == ["suppressed"]


def test_a_replayed_token_is_a_406_and_changes_nothing(
    client: TestClient, database: Database, alice: str
) -> None:
    signed = mailgun_signed(fixture("mailgun_complained.json"))
    assert post(client, signed).status_code == 200
    before = written(database)
    # The same request again, and the same token under another event.
    assert_problem(post(client, signed), 406, "not-acceptable")
    other = mailgun_signed(fixture("mailgun_unsubscribed.json"), token=signed["signature"]["token"])
    assert_problem(post(client, other), 406, "not-acceptable")
    assert written(database) == before


@pytest.mark.parametrize("field", ["timestamp", "token", "signature"])
def test_every_flipped_byte_of_the_signature_is_refused(
    client: TestClient, database: Database, alice: str, field: str
) -> None:
    signed = mailgun_signed(fixture("mailgun_complained.json"))
    before = written(database)
    value: str = signed["signature"][field]
    for index in range(len(value)):
        tampered = json.loads(json.dumps(signed))
        flipped = bytearray(value.encode())
        flipped[index] ^= 0x01
        tampered["signature"][field] = flipped.decode("latin-1")
        response = post(client, tampered)
        assert response.status_code == 401, (index, response.text)
    assert written(database) == before


def test_an_old_timestamp_is_refused(client: TestClient, database: Database, alice: str) -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    before = written(database)
    assert_problem(
        post(client, mailgun_signed(fixture("mailgun_complained.json"), at=old)),
        401,
        "signature-invalid",
    )
    assert written(database) == before


def test_the_documented_sample_signature_is_not_ours(client: TestClient, alice: str) -> None:
    # Signed with Mailgun's key for its docs, long ago: not with ours.
    assert_problem(post(client, fixture("mailgun_complained.json")), 401, "signature-invalid")


def test_an_unknown_event_is_accepted_and_ignored(client: TestClient, database: Database) -> None:
    sample = fixture("mailgun_complained.json")
    sample["event-data"]["event"] = "delivered"
    before = written(database)
    response = post(client, mailgun_signed(sample))
    assert response.status_code == 200
    assert response.json()["ignored"] == 1
    # Only the token is remembered (a replay of it is refused).
    assert written(database)["InboundReceipt"] == before["InboundReceipt"] + 1


def test_not_json_is_a_406(client: TestClient) -> None:
    assert_problem(post(client, b"token=1&timestamp=2"), 406, "not-acceptable")
