"""`PUT /v1/topics/{key}`, `GET /v1/topics`, `GET /v1/topics/{key}`."""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.models import AuditEvent
from prefcenter.db import Database
from prefcenter.idempotency import REPLAY_HEADER
from prefcenter.topics.models import Topic
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    count_rows,
    error_fields,
    make_topic,
    revoke_key,
    row_counts,
)
from tests.support.harness import issue_key

NEWSLETTER = {
    "name": "Newsletter",
    "description": "Monthly news",
    "kind": "marketing",
    "consent": "opt_in",
}


class TestPutTopic:
    def test_new_topic_is_created_with_201_and_returned(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        response = client.put("/v1/topics/newsletter", headers=admin_headers, json=NEWSLETTER)

        assert response.status_code == 201
        topic = response.json()
        assert topic["key"] == "newsletter"
        assert topic["name"] == "Newsletter"
        assert topic["description"] == "Monthly news"
        assert topic["kind"] == "marketing"
        assert topic["consent"] == "opt_in"
        assert topic["double_opt_in"] is False
        assert topic["created_at"] == topic["updated_at"]
        assert datetime.fromisoformat(topic["created_at"]).tzinfo is not None
        assert client.get("/v1/topics/newsletter", headers=admin_headers).json() == topic

    def test_existing_topic_is_updated_with_200(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        created = make_topic(client, admin_headers, "newsletter", **NEWSLETTER)

        response = client.put(
            "/v1/topics/newsletter",
            headers=admin_headers,
            json={**NEWSLETTER, "name": "The Letter", "description": None, "double_opt_in": True},
        )

        assert response.status_code == 200
        updated = response.json()
        assert updated["name"] == "The Letter"
        assert updated["description"] is None
        assert updated["double_opt_in"] is True
        assert updated["created_at"] == created["created_at"]
        assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(
            created["updated_at"]
        )
        assert client.get("/v1/topics/newsletter", headers=admin_headers).json() == updated

    def test_same_topic_again_is_200_and_writes_no_event(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        created = make_topic(client, admin_headers, "newsletter", **NEWSLETTER)

        response = client.put("/v1/topics/newsletter", headers=admin_headers, json=NEWSLETTER)

        assert response.status_code == 200
        assert response.json() == created
        assert len(audit_events(database)) == 1

    def test_name_is_stripped_and_may_not_be_blank(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        topic = make_topic(client, admin_headers, "news", name="  News  ")
        assert topic["name"] == "News"

        response = client.put(
            "/v1/topics/other", headers=admin_headers, json={**NEWSLETTER, "name": "   "}
        )
        assert error_fields(assert_problem(response, 422)) == ["name"]

    def test_kind_or_consent_model_cannot_change(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        created = make_topic(client, admin_headers, "newsletter", **NEWSLETTER)

        for field, value in [("kind", "transactional"), ("consent", "opt_out")]:
            with subtests.test(field=field):
                response = client.put(
                    "/v1/topics/newsletter",
                    headers=admin_headers,
                    json={**NEWSLETTER, field: value},
                )

                problem = assert_problem(response, 409, "topic-model-change")
                assert "newsletter" in problem["detail"]
        assert client.get("/v1/topics/newsletter", headers=admin_headers).json() == created
        assert len(audit_events(database)) == 1

    def test_key_matching_the_pattern_is_accepted(
        self, client: TestClient, admin_headers: Headers, subtests: pytest.Subtests
    ) -> None:
        keys = ["a", "0", "9-lives", "news-letter-2", "a" * 64]
        for key in keys:
            with subtests.test(key=key):
                response = client.put(f"/v1/topics/{key}", headers=admin_headers, json=NEWSLETTER)

                assert response.status_code == 201, response.text
                assert response.json()["key"] == key
        listed = client.get("/v1/topics", headers=admin_headers).json()["topics"]
        assert sorted(t["key"] for t in listed) == sorted(keys)

    def test_key_outside_the_pattern_is_422_and_creates_nothing(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        for key in [
            "News",
            "-news",
            "news_letter",
            "news.letter",
            "nëws",
            "a" * 65,
            "news%20letter",
        ]:
            with subtests.test(key=key):
                response = client.put(f"/v1/topics/{key}", headers=admin_headers, json=NEWSLETTER)

                assert error_fields(assert_problem(response, 422, "validation")) == ["key"]
        assert count_rows(database, Topic) == 0
        assert count_rows(database, AuditEvent) == 0

    def test_bad_body_is_422_naming_the_field(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        cases: list[tuple[dict[str, object], str]] = [
            ({"kind": "marketing", "consent": "opt_in"}, "name"),
            ({**NEWSLETTER, "kind": "promotional"}, "kind"),
            ({**NEWSLETTER, "consent": "maybe"}, "consent"),
            ({**NEWSLETTER, "double_opt_in": "sometimes"}, "double_opt_in"),
            ({**NEWSLETTER, "colour": "blue"}, "colour"),
            ({**NEWSLETTER, "name": "x" * 201}, "name"),
            ({**NEWSLETTER, "name": "News\x00"}, "name"),
            ({**NEWSLETTER, "description": "a\x00b"}, "description"),
            ({**NEWSLETTER, "description": "d" * 2001}, "description"),
        ]
        for body, field in cases:
            with subtests.test(field=field, body=body):
                response = client.put("/v1/topics/newsletter", headers=admin_headers, json=body)

                assert error_fields(assert_problem(response, 422, "validation")) == [field]
        assert count_rows(database, Topic) == 0
        assert count_rows(database, AuditEvent) == 0

    def test_description_may_span_lines(self, client: TestClient, admin_headers: Headers) -> None:
        topic = make_topic(client, admin_headers, "news", description="Line one\r\n\tLine two")
        assert topic["description"] == "Line one\r\n\tLine two"

    def test_consent_write_key_is_forbidden(
        self, client: TestClient, writer_headers: Headers, database: Database
    ) -> None:
        response = client.put("/v1/topics/newsletter", headers=writer_headers, json=NEWSLETTER)

        problem = assert_problem(response, 403, "forbidden")
        assert "admin" in problem["detail"]
        assert count_rows(database, Topic) == 0

    def test_missing_key_is_401(self, client: TestClient, database: Database) -> None:
        response = client.put("/v1/topics/newsletter", json=NEWSLETTER)

        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert count_rows(database, Topic) == 0

    def test_revoked_admin_key_is_401(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers, "before")
        revoke_key(database, admin_headers)

        response = client.put("/v1/topics/newsletter", headers=admin_headers, json=NEWSLETTER)

        assert_problem(response, 401, "unauthenticated")
        assert count_rows(database, Topic) == 1

    def test_creation_and_update_are_audited(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers, "newsletter", **NEWSLETTER)
        make_topic(client, admin_headers, "newsletter", **{**NEWSLETTER, "name": "Renamed"})

        created, updated = audit_events(database)
        assert [created.seq, updated.seq] == [1, 2]
        for event in (created, updated):
            assert event.kind == "topic_change"
            assert event.topic == "newsletter"
            assert event.contact_id is None
            assert event.actor.startswith("api_key:")
            assert event.actor.endswith(":admin")
            assert event.outcome == "applied"
        assert created.context["created"] is True
        assert created.context["topic"]["name"] == "Newsletter"
        assert updated.context["created"] is False
        assert updated.context["topic"]["name"] == "Renamed"

    def test_idempotent_retry_replays_201_and_the_same_body(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        headers = {**admin_headers, "Idempotency-Key": "create-newsletter-1"}
        first = client.put("/v1/topics/newsletter", headers=headers, json=NEWSLETTER)
        after_first = row_counts(database)

        again = client.put("/v1/topics/newsletter", headers=headers, json=NEWSLETTER)

        assert first.status_code == 201
        assert REPLAY_HEADER.lower() not in first.headers
        assert again.status_code == 201
        assert again.headers[REPLAY_HEADER] == "true"
        assert again.json() == first.json()
        assert row_counts(database) == after_first
        assert len(audit_events(database)) == 1

    def test_idempotent_retry_of_an_update_replays_200(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers, "newsletter", **NEWSLETTER)
        headers = {**admin_headers, "Idempotency-Key": "rename"}
        body = {**NEWSLETTER, "name": "Renamed"}
        first = client.put("/v1/topics/newsletter", headers=headers, json=body)

        again = client.put("/v1/topics/newsletter", headers=headers, json=body)

        assert (first.status_code, again.status_code) == (200, 200)
        assert again.headers[REPLAY_HEADER] == "true"
        assert again.json() == first.json()
        assert len(audit_events(database)) == 2


class TestGetTopics:
    def test_no_topics_is_an_empty_list(self, client: TestClient, admin_headers: Headers) -> None:
        response = client.get("/v1/topics", headers=admin_headers)

        assert response.status_code == 200
        assert response.json() == {"topics": []}

    def test_lists_every_topic_by_key(self, client: TestClient, admin_headers: Headers) -> None:
        receipts = make_topic(client, admin_headers, "receipts", kind="transactional")
        newsletter = make_topic(client, admin_headers, "newsletter", consent="opt_out")
        alerts = make_topic(client, admin_headers, "alerts", double_opt_in=True)

        response = client.get("/v1/topics", headers=admin_headers)

        assert response.json() == {"topics": [alerts, newsletter, receipts]}

    def test_any_valid_key_may_list(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        reader = issue_key(database, Scope.ELIGIBILITY, name="mailer")

        response = client.get("/v1/topics", headers=reader)

        assert response.status_code == 200
        assert [t["key"] for t in response.json()["topics"]] == ["newsletter"]

    def test_missing_key_is_401(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/topics"), 401, "unauthenticated")


class TestGetTopic:
    def test_reads_one_topic(self, client: TestClient, admin_headers: Headers) -> None:
        make_topic(client, admin_headers, "newsletter")
        receipts = make_topic(client, admin_headers, "receipts", kind="transactional")

        response = client.get("/v1/topics/receipts", headers=admin_headers)

        assert response.status_code == 200
        assert response.json() == receipts

    def test_unknown_topic_is_404(self, client: TestClient, admin_headers: Headers) -> None:
        make_topic(client, admin_headers, "newsletter")

        response = client.get("/v1/topics/missing", headers=admin_headers)

        problem = assert_problem(response, 404, "topic-not-found")
        assert "missing" in problem["detail"]

    def test_key_outside_the_pattern_is_422(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        response = client.get("/v1/topics/Not_A_Key", headers=admin_headers)

        assert error_fields(assert_problem(response, 422)) == ["key"]

    def test_missing_key_is_401(self, client: TestClient, admin_headers: Headers) -> None:
        make_topic(client, admin_headers, "newsletter")

        assert_problem(client.get("/v1/topics/newsletter"), 401, "unauthenticated")
