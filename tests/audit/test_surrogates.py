"""A lone surrogate (`"\\ud800"`) is valid JSON but no UTF-8 text: no audit event can hold it.
It is refused as a 422 where it comes in, never met at COMMIT as a 500; so is an integer that
RFC 8785 cannot write."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from prefcenter.db import Database
from tests.support.factories import make_topic, row_counts

Headers = dict[str, str]

# Bodies as sent (ASCII, the surrogate escaped as JSON allows), and the field a 422 names.
_BASE = '{"email": "ada@example.com", "status": "subscribed", '
BODIES = {
    "reason": (_BASE + '"reason": "x\\ud800y"}', "reason"),
    "low surrogate": (_BASE + '"reason": "\\udc00"}', "reason"),
    "campaign_id": (_BASE + '"campaign_id": "c\\ud800"}', "campaign_id"),
    "evidence value": (_BASE + '"evidence": {"form": "a\\ud800"}}', "evidence"),
    "evidence key": (_BASE + '"evidence": {"\\ud800": 1}}', "evidence"),
    "nested evidence": (_BASE + '"evidence": {"a": [{"b": ["\\ud800"]}]}}', "evidence"),
}


class TestPostConsents:
    @pytest.mark.parametrize("field", sorted(BODIES))
    def test_a_lone_surrogate_is_refused_and_nothing_is_written(
        self, client: TestClient, admin_headers: Headers, database: Database, field: str
    ) -> None:
        make_topic(client, admin_headers, "news")
        before = row_counts(database)
        body, named = BODIES[field]
        response = client.post(
            "/v1/consents",
            headers={**admin_headers, "Content-Type": "application/json"},
            content=body.encode("ascii"),
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        (error,) = response.json()["errors"]
        assert error["field"] == named
        if named == "evidence":
            assert "lone surrogates" in error["detail"]
        assert row_counts(database) == before

    def test_a_surrogate_pair_is_one_character_and_accepted(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "news")
        body = (
            '{"email": "ada@example.com", "status": "subscribed", "topic": "news", '
            '"reason": "\\ud83d\\ude00", "evidence": {"\\ud83d\\ude00": "\\ud83d\\ude00"}}'
        )
        response = client.post(
            "/v1/consents",
            headers={**admin_headers, "Content-Type": "application/json"},
            content=body.encode("ascii"),
        )
        assert response.status_code == 200, response.text


class TestIntegersBeyondADouble:
    """Evidence is stored as RFC 8785 JSON, whose numbers are doubles: a larger integer is
    refused where it comes in, not met at COMMIT as a 500."""

    @pytest.mark.parametrize("number", [2**53, -(2**53), 2**64])
    def test_an_integer_a_double_cannot_hold_is_refused(
        self, client: TestClient, admin_headers: Headers, database: Database, number: int
    ) -> None:
        make_topic(client, admin_headers, "news")
        before = row_counts(database)
        response = client.post(
            "/v1/consents",
            headers=admin_headers,
            json={"email": "ada@example.com", "status": "subscribed", "evidence": {"n": number}},
        )
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == "evidence"
        assert row_counts(database) == before

    def test_the_largest_exact_integer_is_accepted(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "news")
        response = client.post(
            "/v1/consents",
            headers=admin_headers,
            json={"email": "ada@example.com", "status": "subscribed", "evidence": {"n": 2**53 - 1}},
        )
        assert response.status_code == 200, response.text
