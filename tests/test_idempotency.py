"""`Idempotency-Key` on mutating calls: a retry gets the first answer and changes nothing."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from prefcenter.idempotency import REPLAY_HEADER, IdempotencyRecord, fingerprint
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    count_rows,
    error_fields,
    lookup,
    make_topic,
    record_change,
    row_counts,
    subscription_status,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"


def with_key(headers: Headers, key: str) -> Headers:
    return {**headers, "Idempotency-Key": key}


class TestIdempotentConsents:
    def test_retry_returns_the_first_answer_and_writes_no_second_event(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        headers = with_key(writer_headers, "change-0001")
        body = {"email": ADA, "topic": newsletter, "status": "subscribed"}
        first = client.post("/v1/consents", headers=headers, json=body)
        after_first = row_counts(database)

        retry = client.post("/v1/consents", headers=headers, json=body)

        assert first.status_code == 200
        assert REPLAY_HEADER.lower() not in first.headers
        assert retry.status_code == 200
        assert retry.headers[REPLAY_HEADER] == "true"
        assert retry.json() == first.json()
        assert row_counts(database) == after_first
        events = [e for e in audit_events(database) if e.kind == "consent_change"]
        assert [e.id for e in events] == [first.json()["event_id"]]
        assert events[0].context["idempotency_key"] == "change-0001"

    def test_without_a_key_a_repeat_is_a_second_change(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        first = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        second = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)

        assert first["event_id"] != second["event_id"]
        assert count_rows(database, IdempotencyRecord) == 0

    def test_retry_after_a_later_change_replays_and_does_not_undo_it(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        headers = with_key(writer_headers, "subscribe-ada")
        body = {"email": ADA, "topic": newsletter, "status": "subscribed"}
        first = client.post("/v1/consents", headers=headers, json=body)
        record_change(client, writer_headers, ADA, "unsubscribed", topic=newsletter)
        after_opt_out = row_counts(database)

        retry = client.post("/v1/consents", headers=headers, json=body)

        assert retry.json() == first.json()
        assert retry.json()["status"] == "subscribed"
        assert row_counts(database) == after_opt_out
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) == "unsubscribed"

    def test_same_key_with_another_body_is_422_and_changes_nothing(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        headers = with_key(writer_headers, "change-0002")
        body = {"email": ADA, "topic": newsletter, "status": "subscribed"}
        first = client.post("/v1/consents", headers=headers, json=body)
        after_first = row_counts(database)

        other = client.post(
            "/v1/consents", headers=headers, json={**body, "status": "unsubscribed"}
        )

        problem = assert_problem(other, 422, "idempotency-key-reused")
        assert "change-0002" in problem["detail"]
        assert row_counts(database) == after_first
        (ada,) = lookup(client, writer_headers, ADA)
        assert subscription_status(ada, newsletter) == "subscribed"
        replay = client.post("/v1/consents", headers=headers, json=body)
        assert replay.json() == first.json()

    def test_same_key_on_another_endpoint_is_422(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        headers = with_key(admin_headers, "shared")
        first = client.put(
            "/v1/topics/newsletter",
            headers=headers,
            json={"name": "News", "kind": "marketing", "consent": "opt_in"},
        )
        before = row_counts(database)

        response = client.post(
            "/v1/consents", headers=headers, json={"email": ADA, "status": "unsubscribed"}
        )

        assert first.status_code == 201
        assert_problem(response, 422, "idempotency-key-reused")
        assert row_counts(database) == before

    def test_keys_belong_to_their_api_key(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        other_writer = issue_key(database, Scope.CONSENT_WRITE, name="other-tool")
        ada = {"email": ADA, "topic": newsletter, "status": "subscribed"}
        bob = {"email": "bob@example.com", "topic": newsletter, "status": "unsubscribed"}

        mine = client.post("/v1/consents", headers=with_key(writer_headers, "same"), json=ada)
        theirs = client.post("/v1/consents", headers=with_key(other_writer, "same"), json=bob)

        assert (mine.status_code, theirs.status_code) == (200, 200)
        assert REPLAY_HEADER.lower() not in theirs.headers
        assert theirs.json()["email"] == "bob@example.com"
        assert theirs.json()["event_id"] != mine.json()["event_id"]
        assert count_rows(database, IdempotencyRecord) == 2
        replay = client.post("/v1/consents", headers=with_key(other_writer, "same"), json=bob)
        assert replay.json() == theirs.json()

    def test_json_key_order_and_spacing_do_not_matter(
        self, client: TestClient, writer_headers: Headers, database: Database, newsletter: str
    ) -> None:
        headers = {**with_key(writer_headers, "order"), "Content-Type": "application/json"}
        body: Json = {
            "email": ADA,
            "topic": newsletter,
            "status": "subscribed",
            "evidence": {"form": "v3", "ip": "192.0.2.1"},
        }
        first = client.post("/v1/consents", headers=headers, content=json.dumps(body))
        after_first = row_counts(database)
        reordered = {
            "evidence": {"ip": "192.0.2.1", "form": "v3"},
            "status": "subscribed",
            "topic": newsletter,
            "email": ADA,
        }

        retry = client.post(
            "/v1/consents", headers=headers, content=json.dumps(reordered, indent=4) + "\n"
        )

        assert retry.status_code == 200
        assert retry.headers[REPLAY_HEADER] == "true"
        assert retry.json() == first.json()
        assert row_counts(database) == after_first

    def test_refused_request_is_not_remembered(
        self,
        client: TestClient,
        writer_headers: Headers,
        admin_headers: Headers,
        database: Database,
    ) -> None:
        headers = with_key(writer_headers, "early")
        body = {"email": ADA, "topic": "later", "status": "subscribed"}
        refused = client.post("/v1/consents", headers=headers, json=body)
        make_topic(client, admin_headers, "later")

        accepted = client.post("/v1/consents", headers=headers, json=body)

        assert_problem(refused, 422, "unknown-topic")
        assert accepted.status_code == 200
        assert REPLAY_HEADER.lower() not in accepted.headers
        assert accepted.json()["status"] == "subscribed"
        assert count_rows(database, IdempotencyRecord) == 1

    def test_malformed_idempotency_key_is_422(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        for key in ["has space", "k" * 256, ""]:
            with subtests.test(key=key[:20]):
                response = client.post(
                    "/v1/consents",
                    headers=with_key(writer_headers, key),
                    json={"email": ADA, "status": "unsubscribed"},
                )

                problem = assert_problem(response, 422, "validation")
                assert error_fields(problem) == ["Idempotency-Key"]
        assert row_counts(database) == before

    def test_longest_idempotency_key_is_accepted(
        self, client: TestClient, writer_headers: Headers
    ) -> None:
        headers = with_key(writer_headers, "k" * 255)
        body = {"email": ADA, "status": "unsubscribed"}

        first = client.post("/v1/consents", headers=headers, json=body)
        retry = client.post("/v1/consents", headers=headers, json=body)

        assert first.status_code == 200
        assert retry.headers[REPLAY_HEADER] == "true"


class TestIdempotentTopics:
    def test_retry_of_a_creation_replays_201(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        headers = with_key(admin_headers, "create")
        body = {"name": "News", "kind": "marketing", "consent": "opt_in"}
        first = client.put("/v1/topics/newsletter", headers=headers, json=body)
        after_first = row_counts(database)

        retry = client.put("/v1/topics/newsletter", headers=headers, json=body)

        assert (first.status_code, retry.status_code) == (201, 201)
        assert retry.headers[REPLAY_HEADER] == "true"
        assert retry.json() == first.json()
        assert row_counts(database) == after_first

    def test_same_key_for_another_topic_is_422(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        headers = with_key(admin_headers, "create")
        body = {"name": "News", "kind": "marketing", "consent": "opt_in"}
        client.put("/v1/topics/newsletter", headers=headers, json=body)
        before = row_counts(database)

        response = client.put("/v1/topics/offers", headers=headers, json=body)

        assert_problem(response, 422, "idempotency-key-reused")
        assert row_counts(database) == before


def test_a_body_parsed_already_has_the_fingerprint_of_its_bytes() -> None:
    """The dependency hands over the body as the route parsed it: same fingerprint."""
    body = b'{"changes": [{"status": "subscribed", "email": "\\u00fc@example.com", "n": 1.5}]}'
    parsed = json.loads(body)

    assert fingerprint("POST", "/v1/consents/batch", "", body, parsed=parsed) == fingerprint(
        "POST", "/v1/consents/batch", "", body
    )
