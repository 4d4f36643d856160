"""`GET /v1/suppressions` and `GET /v1/topics/{key}/audience`: streamed CSV exports."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.apikeys.schemas import Scope
from prefcenter.consent.models import Subscription, Suppression
from prefcenter.consent.rules import Status
from prefcenter.contacts.models import Contact
from prefcenter.csv_cells import spreadsheet_safe
from prefcenter.db import Database
from prefcenter.eligibility.rules import TopicModel, decide_eligibility
from prefcenter.exports import chunks
from prefcenter.topics.models import Topic
from prefcenter.topics.schemas import ConsentModel, TopicKind
from tests.support.factories import Headers, assert_problem, lookup, make_topic, record_change
from tests.support.harness import issue_key

# Valid addresses (parse_address accepts them) that a spreadsheet would read as formulas.
FORMULA_ADDRESSES = ("=cmd@example.com", "+1@example.com", "-x@example.com")


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture
def reader_headers(database: Database) -> Headers:
    return issue_key(database, Scope.CONSENT_READ, Scope.ELIGIBILITY, name="mailer")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of two rows, so a handful of contacts crosses several chunk boundaries."""
    monkeypatch.setattr(chunks, "CHUNK_ROWS", 2)


def public_ids(client: TestClient, headers: Headers, *emails: str) -> dict[str, str]:
    return {c["email"]: c["contact_id"] for c in lookup(client, headers, *emails)}


def suppress(client: TestClient, headers: Headers, email: str) -> None:
    record_change(client, headers, email, "unsubscribed")


class TestSuppressions:
    def test_lists_contacts_with_a_contact_wide_opt_out_in_contact_order(
        self,
        client: TestClient,
        writer_headers: Headers,
        reader_headers: Headers,
        admin_headers: Headers,
        small_chunks: None,
    ) -> None:
        make_topic(client, admin_headers, "news")
        suppressed = [f"s{i}@example.com" for i in range(5)]
        for email in suppressed:
            suppress(client, writer_headers, email)
            record_change(client, writer_headers, f"keep-{email}", "subscribed", topic="news")
        record_change(
            client, writer_headers, "topic-only@example.com", "unsubscribed", topic="news"
        )
        # Lifted again: no longer suppressed.
        suppress(client, writer_headers, "lifted@example.com")
        record_change(client, writer_headers, "lifted@example.com", "subscribed")

        response = client.get("/v1/suppressions", headers=reader_headers)

        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        rows = csv_rows(response.text)
        assert rows[0] == ["email", "reason", "since"]
        assert [r[0] for r in rows[1:]] == suppressed
        assert {r[1] for r in rows[1:]} == {"unsubscribed_all"}
        for row in rows[1:]:
            assert datetime.fromisoformat(row[2]).tzinfo is not None

    def test_empty_export_is_the_header_alone(
        self, client: TestClient, reader_headers: Headers
    ) -> None:
        response = client.get("/v1/suppressions", headers=reader_headers)

        assert response.status_code == 200
        assert response.text == "email,reason,since\r\n"

    def test_formula_addresses_are_neutralised(
        self, client: TestClient, writer_headers: Headers, reader_headers: Headers
    ) -> None:
        for email in FORMULA_ADDRESSES:
            suppress(client, writer_headers, email)

        rows = csv_rows(client.get("/v1/suppressions", headers=reader_headers).text)

        assert [r[0] for r in rows[1:]] == ["'" + e for e in FORMULA_ADDRESSES]

    def test_needs_the_consent_read_scope(self, client: TestClient, database: Database) -> None:
        headers = issue_key(database, Scope.ELIGIBILITY, name="eligibility-only")

        assert_problem(client.get("/v1/suppressions", headers=headers), 403)
        assert_problem(client.get("/v1/suppressions"), 401)


class TestAudience:
    def test_unknown_topic_is_a_404_problem(
        self, client: TestClient, reader_headers: Headers
    ) -> None:
        response = client.get("/v1/topics/nope/audience", headers=reader_headers)

        assert_problem(response, 404, "topic-not-found")

    def test_needs_the_eligibility_scope(
        self, client: TestClient, database: Database, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "news")
        headers = issue_key(database, Scope.CONSENT_READ, name="reader-only")

        assert_problem(client.get("/v1/topics/news/audience", headers=headers), 403)

    def test_opt_in_topic_lists_subscribed_contacts_with_their_public_id(
        self,
        client: TestClient,
        writer_headers: Headers,
        reader_headers: Headers,
        admin_headers: Headers,
        small_chunks: None,
    ) -> None:
        make_topic(client, admin_headers, "news")
        subscribed = [f"in{i}@example.com" for i in range(5)]
        for email in subscribed:
            record_change(client, writer_headers, email, "subscribed", topic="news")
        record_change(client, writer_headers, "out@example.com", "unsubscribed", topic="news")
        ids = public_ids(client, writer_headers, *subscribed)

        response = client.get("/v1/topics/news/audience", headers=reader_headers)

        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        rows = csv_rows(response.text)
        assert rows[0] == ["email", "contact_id"]
        # Every cell is made spreadsheet-safe, the public id too (it may start with `-`).
        assert rows[1:] == [[email, spreadsheet_safe(ids[email])] for email in subscribed]

    def test_formula_addresses_are_neutralised(
        self,
        client: TestClient,
        writer_headers: Headers,
        reader_headers: Headers,
        admin_headers: Headers,
    ) -> None:
        make_topic(client, admin_headers, "news")
        for email in FORMULA_ADDRESSES:
            record_change(client, writer_headers, email, "subscribed", topic="news")

        rows = csv_rows(client.get("/v1/topics/news/audience", headers=reader_headers).text)

        assert [r[0] for r in rows[1:]] == ["'" + e for e in FORMULA_ADDRESSES]

    def test_audience_is_exactly_who_eligibility_allows(
        self,
        client: TestClient,
        database: Database,
        writer_headers: Headers,
        reader_headers: Headers,
        admin_headers: Headers,
        small_chunks: None,
    ) -> None:
        topics: dict[str, dict[str, Any]] = {
            "in": {"kind": "marketing", "consent": "opt_in"},
            "in-doi": {"kind": "marketing", "consent": "opt_in", "double_opt_in": True},
            "out": {"kind": "marketing", "consent": "opt_out"},
            "out-doi": {"kind": "marketing", "consent": "opt_out", "double_opt_in": True},
            "receipts": {"kind": "transactional", "consent": "opt_in"},
        }
        for key, spec in topics.items():
            make_topic(client, admin_headers, key, **spec)
        for i, key in enumerate(topics):
            # Per topic: subscribed (pending on double opt-in), unsubscribed, and both while
            # suppressed; plus contacts that only exist through other topics.
            record_change(client, writer_headers, f"sub-{i}@example.com", "subscribed", topic=key)
            record_change(client, writer_headers, f"uns-{i}@example.com", "unsubscribed", topic=key)
            record_change(client, writer_headers, f"sup-{i}@example.com", "subscribed", topic=key)
            suppress(client, writer_headers, f"sup-{i}@example.com")
            suppress(client, writer_headers, f"sup-uns-{i}@example.com")
            record_change(
                client, writer_headers, f"sup-uns-{i}@example.com", "unsubscribed", topic=key
            )
        suppress(client, writer_headers, "lifted@example.com")
        record_change(client, writer_headers, "lifted@example.com", "subscribed")
        record_change(client, writer_headers, "=cmd@example.com", "subscribed", topic="in")

        with database.transaction(write=False) as session:
            contacts = list(session.exec(select(Contact).order_by(col(Contact.id))))
            subscriptions = {
                (s.contact_id, s.topic_id): s for s in session.exec(select(Subscription))
            }
            suppressions = {s.contact_id: s for s in session.exec(select(Suppression))}
            stored_topics = list(session.exec(select(Topic)))
        statuses = {s.status for s in subscriptions.values()}
        assert statuses == {"subscribed", "unsubscribed", "pending"}, "dataset lacks a state"

        audience_sizes: dict[str, int] = {}
        for topic in stored_topics:
            model = TopicModel(kind=TopicKind(topic.kind), consent=ConsentModel(topic.consent))
            expected: list[tuple[str, str]] = []
            for contact in contacts:
                subscription = subscriptions.get((contact.id or 0, topic.id or 0))
                suppression = suppressions.get(contact.id or 0)
                decision = decide_eligibility(
                    model,
                    erased=contact.erased_at is not None,
                    suppressed=suppression is not None and suppression.suppressed,
                    subscription=None if subscription is None else Status(subscription.status),
                )
                if decision.allowed:
                    assert contact.address_display is not None
                    expected.append((contact.address_display, contact.public_id))

            response = client.get(f"/v1/topics/{topic.key}/audience", headers=reader_headers)

            assert response.status_code == 200, response.text
            rows = csv_rows(response.text)[1:]
            assert rows == [[spreadsheet_safe(e), spreadsheet_safe(p)] for e, p in expected], (
                topic.key
            )
            # …and `POST /v1/eligibility`, asked about every contact, allows the same ones.
            asked = [c.address_display for c in contacts]
            answer = client.post(
                "/v1/eligibility",
                headers=reader_headers,
                json={"topic": topic.key, "emails": asked},
            )
            assert answer.status_code == 200, answer.text
            allowed = [r["email"] for r in answer.json()["results"] if r["allowed"]]
            assert [email for email, _ in expected] == allowed, topic.key
            audience_sizes[topic.key] = len(expected)
        # Nobody is confirmed on `in-doi`; nobody is erased, so `receipts` reaches everyone; the
        # marketing topics hold someone and leave someone out, or the comparison proves little.
        assert audience_sizes["in-doi"] == 0
        assert audience_sizes["receipts"] == len(contacts)
        for key in ("in", "out", "out-doi"):
            assert 0 < audience_sizes[key] < len(contacts), key
