"""SendGrid's Event Webhook: signatures made in the test with a P-256 key, which SendGrid's own
verifier (`sendgrid.helpers.eventwebhook.EventWebhook`) accepts too; every flipped byte of
body, signature or timestamp refused; what each event type does."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sendgrid.helpers.eventwebhook import EventWebhook

from prefcenter.db import Database
from prefcenter.inbound.events import Action
from prefcenter.inbound.sendgrid import read_events
from tests.inbound.esp import SENDGRID_GROUP, SendGridSigner, fixture_text
from tests.inbound.helpers import bounce_row, eligibility, subscribe, written
from tests.support.factories import Headers, assert_problem, lookup, make_topic, subscription_status

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
SAMPLE = fixture_text("sendgrid_events.json").encode()
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_sendgrids_own_verifier_accepts_what_the_tests_sign(
    sendgrid_signer: SendGridSigner,
) -> None:
    headers = sendgrid_signer.headers(SAMPLE)
    verifier = EventWebhook(public_key=sendgrid_signer.public_key)
    assert verifier.verify_signature(SAMPLE.decode(), headers[SIGNATURE], headers[TIMESTAMP])
    assert not verifier.verify_signature(
        SAMPLE.decode().replace("bounce", "bouncy", 1), headers[SIGNATURE], headers[TIMESTAMP]
    )


def test_each_sample_event_means_what_sendgrid_documents() -> None:
    events = read_events(SAMPLE, groups={SENDGRID_GROUP: "offers"}, now=NOW)
    assert [e.action for e in events] == [
        Action.IGNORED,  # processed
        Action.IGNORED,  # deferred
        Action.IGNORED,  # delivered
        Action.IGNORED,  # open
        Action.HARD_BOUNCE,
        Action.SOFT_BOUNCE,  # blocked
        Action.COMPLAINT,
        Action.UNSUBSCRIBE,
        Action.UNSUBSCRIBE,  # group_unsubscribe
    ]
    assert events[-1].topics == ("offers",)
    assert events[-2].topics is None
    assert events[4].receipt == "6g4ZI7SA-xmRDv57GoPIPw=="
    assert events[4].evidence["esp_event_id"] == "6g4ZI7SA-xmRDv57GoPIPw=="
    assert events[4].occurred_at == datetime.fromtimestamp(1513299569, UTC)
    # A group that is not mapped: all marketing.
    assert read_events(SAMPLE, groups={}, now=NOW)[-1].topics is None


def post(client: TestClient, body: bytes, headers: dict[str, str]) -> object:
    return client.post("/v1/inbound/sendgrid", content=body, headers=headers)


class TestDelivery:
    def test_the_sample_batch_records_what_it_means(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        sendgrid_signer: SendGridSigner,
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        make_topic(client, admin_headers, "offers")
        for email in ("example@test.com", "spam@test.com", "unsub@test.com", "group@test.com"):
            subscribe(client, admin_headers, email, "newsletter")
            subscribe(client, admin_headers, email, "offers")
        response = client.post(
            "/v1/inbound/sendgrid", content=SAMPLE, headers=sendgrid_signer.headers(SAMPLE)
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "events": 9,
            "recorded": 4,
            "duplicates": 0,
            "ignored": 4,
            "unknown_addresses": 1,  # blocked@test.com has no contact, and gets none
        }
        emails = ("example@test.com", "spam@test.com", "unsub@test.com", "group@test.com")
        assert eligibility(client, admin_headers, "newsletter", *emails) == [
            "bounced",
            "suppressed",
            "suppressed",
            "subscribed",  # the group maps to `offers` only
        ]
        (group,) = lookup(client, admin_headers, "group@test.com")
        assert subscription_status(group, "offers") == "unsubscribed"
        assert lookup(client, admin_headers, "blocked@test.com")[0]["contact_id"] is None
        row = bounce_row(database, "example@test.com")
        assert row is not None
        assert row.bounced
        assert row.source == "sendgrid"

    def test_the_same_batch_twice_changes_nothing_the_second_time(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        sendgrid_signer: SendGridSigner,
    ) -> None:
        subscribe(client, admin_headers, "spam@test.com", make_topic(client, admin_headers)["key"])
        headers = sendgrid_signer.headers(SAMPLE)
        assert post(client, SAMPLE, headers).status_code == 200  # type: ignore[attr-defined]
        before = written(database)
        again = client.post("/v1/inbound/sendgrid", content=SAMPLE, headers=headers)
        assert again.status_code == 200
        assert again.json()["duplicates"] == 5
        assert written(database) == before

    @pytest.mark.parametrize("part", ["body", "signature", "timestamp"])
    def test_every_flipped_byte_is_refused_and_changes_nothing(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        sendgrid_signer: SendGridSigner,
        part: str,
    ) -> None:
        subscribe(client, admin_headers, "spam@test.com", make_topic(client, admin_headers)["key"])
        body = json.dumps([json.loads(SAMPLE)[6]]).encode()  # the spam report
        headers = sendgrid_signer.headers(body)
        before = written(database)
        target = (
            body
            if part == "body"
            else headers[SIGNATURE if part == "signature" else TIMESTAMP].encode()
        )
        for index in range(len(target)):
            tampered = bytearray(target)
            tampered[index] ^= 0x01
            sent_body, sent_headers = body, dict(headers)
            if part == "body":
                sent_body = bytes(tampered)
            else:
                name = SIGNATURE if part == "signature" else TIMESTAMP
                sent_headers[name] = tampered.decode("latin-1")
            response = client.post("/v1/inbound/sendgrid", content=sent_body, headers=sent_headers)
            assert response.status_code == 401, (index, response.text)
        assert written(database) == before

    def test_an_old_timestamp_is_refused(
        self, client: TestClient, sendgrid_signer: SendGridSigner
    ) -> None:
        old = datetime.now(UTC) - timedelta(days=2)
        response = client.post(
            "/v1/inbound/sendgrid", content=SAMPLE, headers=sendgrid_signer.headers(SAMPLE, at=old)
        )
        assert_problem(response, 401, "signature-invalid")

    def test_a_timestamp_from_the_future_is_refused(
        self, client: TestClient, sendgrid_signer: SendGridSigner
    ) -> None:
        ahead = datetime.now(UTC) + timedelta(hours=1)
        response = client.post(
            "/v1/inbound/sendgrid",
            content=SAMPLE,
            headers=sendgrid_signer.headers(SAMPLE, at=ahead),
        )
        assert_problem(response, 401, "signature-invalid")

    def test_another_key_is_refused(self, client: TestClient) -> None:
        other = SendGridSigner.create()
        response = client.post(
            "/v1/inbound/sendgrid", content=SAMPLE, headers=other.headers(SAMPLE)
        )
        assert_problem(response, 401, "signature-invalid")

    def test_no_signature_is_refused(self, client: TestClient) -> None:
        response = client.post("/v1/inbound/sendgrid", content=SAMPLE)
        assert_problem(response, 401, "signature-invalid")

    def test_an_unknown_event_type_is_accepted_and_ignored(
        self,
        client: TestClient,
        database: Database,
        sendgrid_signer: SendGridSigner,
    ) -> None:
        body = b'[{"email": "example@test.com", "event": "teleported", "sg_event_id": "x1"}]'
        before = written(database)
        response = client.post(
            "/v1/inbound/sendgrid", content=body, headers=sendgrid_signer.headers(body)
        )
        assert response.status_code == 200
        assert response.json()["ignored"] == 1
        assert written(database) == before

    def test_a_signed_body_that_is_no_event_list_is_a_400(
        self, client: TestClient, sendgrid_signer: SendGridSigner
    ) -> None:
        body = b'{"event": "bounce"}'
        response = client.post(
            "/v1/inbound/sendgrid", content=body, headers=sendgrid_signer.headers(body)
        )
        assert_problem(response, 400, "payload-invalid")


def test_an_unsubscribe_older_than_the_subscription_changes_nothing(
    client: TestClient, admin_headers: Headers, sendgrid_signer: SendGridSigner
) -> None:
    make_topic(client, admin_headers, "offers")
    subscribe(client, admin_headers, "group@test.com", "offers", at="2020-01-01T00:00:00Z")
    body = json.dumps([json.loads(SAMPLE)[8]]).encode()  # group_unsubscribe of 2017
    response = client.post(
        "/v1/inbound/sendgrid", content=body, headers=sendgrid_signer.headers(body)
    )
    assert response.status_code == 200
    (group,) = lookup(client, admin_headers, "group@test.com")
    assert subscription_status(group, "offers") == "subscribed"
