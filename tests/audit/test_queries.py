"""`GET /v1/audit`: every filter, keyset pages by `seq` without skips or repeats, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit.queries import AUDIT_CURSOR
from prefcenter.db import Database
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    audit_events,
    error_fields,
    make_topic,
    record_change,
)
from tests.support.harness import issue_key

ADA = "ada@example.com"
BOB = "bob@example.com"


@pytest.fixture
def auditor_headers(database: Database) -> Headers:
    return issue_key(database, Scope.AUDIT_READ, name="auditor")


def audit(client: TestClient, headers: Headers, **params: Any) -> Json:
    response = client.get("/v1/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


def seqs(body: Json) -> list[int]:
    return [int(event["seq"]) for event in body["events"]]


@pytest.fixture
def history(client: TestClient, admin_headers: Headers, writer_headers: Headers) -> None:
    """Two topics, two people, two callers, two sources."""
    make_topic(client, admin_headers, "news")
    make_topic(client, admin_headers, "offers", consent="opt_out")
    record_change(client, writer_headers, "Ada@Example.com", "subscribed", topic="news")
    record_change(client, writer_headers, BOB, "subscribed", topic="news", source="signup_form")
    record_change(client, writer_headers, ADA, "unsubscribed", topic="offers", source="import")
    record_change(client, admin_headers, BOB, "unsubscribed", evidence={"ticket": "=1+2"})


class TestFilters:
    def test_without_filters_every_event_in_seq_order(
        self, client: TestClient, auditor_headers: Headers, database: Database, history: None
    ) -> None:
        body = audit(client, auditor_headers)

        assert seqs(body) == [e.seq for e in audit_events(database)]
        assert body["next"] is None
        first = body["events"][0]
        for field in (
            "id",
            "seq",
            "contact_id",
            "topic",
            "from_status",
            "to_status",
            "occurred_at",
            "recorded_at",
            "actor",
            "source",
            "evidence",
        ):
            assert field in first

    def test_email_matches_the_normalised_address(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        body = audit(client, auditor_headers, email="ADA@example.COM")

        assert [(e["topic"], e["to_status"]) for e in body["events"]] == [
            ("news", "subscribed"),
            ("offers", "unsubscribed"),
        ]
        assert len({e["contact_id"] for e in body["events"]}) == 1

    def test_unknown_email_matches_nothing(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        assert audit(client, auditor_headers, email="nobody@example.com")["events"] == []

    def test_contact_id(
        self, client: TestClient, auditor_headers: Headers, writer_headers: Headers, history: None
    ) -> None:
        bob = record_change(client, writer_headers, BOB, "subscribed", topic="news")

        body = audit(client, auditor_headers, contact_id=bob["contact_id"])

        assert len(body["events"]) == 3
        assert {e["contact_id"] for e in body["events"]} == {bob["contact_id"]}

    def test_topic_source_and_actor(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        news = audit(client, auditor_headers, topic="news")["events"]
        assert [(e["kind"], e["to_status"]) for e in news] == [
            ("topic_change", None),
            ("consent_change", "subscribed"),
            ("consent_change", "subscribed"),
        ]
        assert {e["topic"] for e in news} == {"news"}

        imported = audit(client, auditor_headers, source="import")["events"]
        assert [(e["topic"], e["source"]) for e in imported] == [("offers", "import")]

        writer = news[1]["actor"]
        by_writer = audit(client, auditor_headers, actor=writer)["events"]
        assert {e["actor"] for e in by_writer} == {writer}
        assert [(e["topic"], e["to_status"]) for e in by_writer] == [
            ("news", "subscribed"),
            ("news", "subscribed"),
            ("offers", "unsubscribed"),
        ]

    def test_filters_combine(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        body = audit(client, auditor_headers, email=BOB, topic="news", source="signup_form")
        assert [e["to_status"] for e in body["events"]] == ["subscribed"]
        assert audit(client, auditor_headers, email=BOB, source="import")["events"] == []

    def test_since_is_inclusive_and_until_exclusive(
        self, client: TestClient, auditor_headers: Headers, database: Database, history: None
    ) -> None:
        events = audit_events(database)
        middle = events[3].recorded_at

        after = audit(client, auditor_headers, since=middle.isoformat())
        before = audit(client, auditor_headers, until=middle.isoformat())

        assert seqs(after) == [e.seq for e in events if e.recorded_at >= middle]
        assert seqs(before) == [e.seq for e in events if e.recorded_at < middle]
        assert seqs(before) + seqs(after) == [e.seq for e in events]

    def test_evidence_comes_with_the_event(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        (event,) = audit(client, auditor_headers, email=BOB, source="api")["events"]
        assert event["evidence"] == {"ticket": "=1+2"}
        assert event["kind"] == "global_consent_change"


class TestPages:
    def test_pages_cover_every_event_once(
        self, client: TestClient, auditor_headers: Headers, writer_headers: Headers
    ) -> None:
        for n in range(7):
            record_change(client, writer_headers, f"p{n}@example.com", "unsubscribed")
        record_change(client, writer_headers, ADA, "unsubscribed")
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3, "source": "api"}
            if cursor is not None:
                params["cursor"] = cursor
            body = audit(client, auditor_headers, **params)
            seen.extend(seqs(body))
            pages += 1
            cursor = body["next"]
            if cursor is None:
                break
            assert len(body["events"]) == 3

        assert seen == sorted(set(seen))
        assert len(seen) == 8
        assert pages == 3

    def test_next_is_null_when_the_page_ends_exactly_at_the_last_event(
        self, client: TestClient, auditor_headers: Headers, writer_headers: Headers
    ) -> None:
        for n in range(4):
            record_change(client, writer_headers, f"p{n}@example.com", "unsubscribed")

        first = audit(client, auditor_headers, limit=2)
        second = audit(client, auditor_headers, limit=2, cursor=first["next"])

        assert first["next"] is not None
        assert len(second["events"]) == 2
        assert second["next"] is None

    def test_a_page_resumes_after_new_events(
        self, client: TestClient, auditor_headers: Headers, writer_headers: Headers
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed")
        record_change(client, writer_headers, BOB, "unsubscribed")
        first = audit(client, auditor_headers, limit=1)

        record_change(client, writer_headers, "cy@example.com", "unsubscribed")
        rest = audit(client, auditor_headers, cursor=first["next"])

        assert len(seqs(first) + seqs(rest)) == 3
        assert seqs(first)[0] < seqs(rest)[0]


class TestBadInput:
    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"cursor": "nonsense"}, "cursor"),
            ({"cursor": AUDIT_CURSOR.encode(5) + "x"}, "cursor"),
            ({"email": "not an address"}, "email"),
            ({"since": "2026-01-01T00:00:00"}, "since"),
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ],
    )
    def test_is_a_422_naming_the_field(
        self,
        client: TestClient,
        auditor_headers: Headers,
        params: dict[str, Any],
        field: str,
    ) -> None:
        response = client.get("/v1/audit", headers=auditor_headers, params=params)
        assert field in error_fields(assert_problem(response, 422))

    def test_needs_the_audit_scope(self, client: TestClient, writer_headers: Headers) -> None:
        assert_problem(client.get("/v1/audit", headers=writer_headers), 403)
        assert_problem(client.get("/v1/audit"), 401)


def test_since_accepts_any_offset(
    client: TestClient, auditor_headers: Headers, writer_headers: Headers
) -> None:
    record_change(client, writer_headers, ADA, "unsubscribed")
    later = (datetime.now(UTC) + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5)))
    assert audit(client, auditor_headers, since=later.isoformat())["events"] == []
    assert len(audit(client, auditor_headers, until=later.isoformat())["events"]) == 1
