"""`POST /v1/links` and `POST /v1/links/batch`: scope, answer shape, List-Unsubscribe headers,
contacts for unknown addresses, unknown topics, batch order and limit, idempotency."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import select

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.consent.models import Subscription
from prefcenter.contacts.models import Contact
from prefcenter.db import Database
from prefcenter.idempotency import REPLAY_HEADER, IdempotencyRecord
from prefcenter.links.schemas import MAX_BATCH
from prefcenter.settings import parse_signing_keys
from prefcenter.tokens import BadSignature, TokenPurpose, verify_token
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    count_rows,
    error_fields,
    lookup,
    make_topic,
    record_change,
    row_counts,
    token_of,
)
from tests.support.harness import TEST_SIGNING_KEYS, issue_key, make_settings

ADA = "ada@example.com"
BASE_URL = "http://testserver"
ONE_CLICK = "List-Unsubscribe=One-Click"
RING = parse_signing_keys(TEST_SIGNING_KEYS)
# Generous: the point is to notice a batch that does per-address work, not to benchmark.
BATCH_SECONDS = 30.0
BATCH_STATEMENTS = 60


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


def post_link(client: TestClient, headers: Headers, body: Json, *, expect: int = 200) -> Json:
    response = client.post("/v1/links", headers=headers, json=body)
    assert response.status_code == expect, response.text
    answer: Json = response.json()
    return answer


def post_batch(
    client: TestClient, headers: Headers, items: list[Json], *, expect: int = 200
) -> list[Json]:
    response = client.post("/v1/links/batch", headers=headers, json={"items": items})
    assert response.status_code == expect, response.text
    answer: list[Json] = response.json()["items"]
    return answer


def token_payload(token: str) -> bytes:
    """The decoded payload part of `<version>.<kid>.<payload>.<tag>`."""
    payload = token.split(".")[2]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def engine_of(client: TestClient) -> Any:
    app = cast(FastAPI, client.app)
    database: Database = app.state.database
    return database.engine


@contextmanager
def counted_statements(client: TestClient) -> Iterator[list[str]]:
    """Every SQL statement the app runs inside the block."""
    statements: list[str] = []
    engine = engine_of(client)

    def on_execute(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


class TestPostLinksAuth:
    @pytest.mark.parametrize("path", ["/v1/links", "/v1/links/batch"])
    def test_without_a_key_is_401(self, client: TestClient, path: str) -> None:
        body: Json = {"email": ADA} if path == "/v1/links" else {"items": [{"email": ADA}]}

        response = client.post(path, json=body)

        assert_problem(response, 401)

    @pytest.mark.parametrize("path", ["/v1/links", "/v1/links/batch"])
    def test_with_a_bad_key_is_401(self, client: TestClient, path: str) -> None:
        body: Json = {"email": ADA} if path == "/v1/links" else {"items": [{"email": ADA}]}

        response = client.post(path, json=body, headers={"Authorization": "Bearer nope"})

        assert_problem(response, 401)

    @pytest.mark.parametrize("path", ["/v1/links", "/v1/links/batch"])
    def test_without_the_links_scope_is_403_and_creates_nothing(
        self, client: TestClient, database: Database, writer_headers: Headers, path: str
    ) -> None:
        body: Json = {"email": ADA} if path == "/v1/links" else {"items": [{"email": ADA}]}
        before = row_counts(database)

        response = client.post(path, json=body, headers=writer_headers)

        assert_problem(response, 403)
        assert row_counts(database) == before

    def test_admin_key_may_issue_links(self, client: TestClient, admin_headers: Headers) -> None:
        post_link(client, admin_headers, {"email": ADA})


class TestPostLinks:
    def test_answer_has_the_contract_shape(
        self, client: TestClient, links_headers: Headers, newsletter: str
    ) -> None:
        link = post_link(client, links_headers, {"email": "Ada@Example.COM", "topic": newsletter})

        assert link["email"] == "Ada@Example.COM"
        assert link["topic"] == newsletter
        unsubscribe, preferences = link["unsubscribe_url"], link["preferences_url"]
        assert unsubscribe.startswith(f"{BASE_URL}/u/")
        assert preferences.startswith(f"{BASE_URL}/p/")
        assert link["headers"] == {
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": ONE_CLICK,
        }

    def test_each_url_has_a_token_of_its_own_purpose(
        self, client: TestClient, links_headers: Headers, newsletter: str
    ) -> None:
        link = post_link(
            client, links_headers, {"email": ADA, "topic": newsletter, "campaign_id": "spring-26"}
        )

        unsubscribe = token_of(link["unsubscribe_url"])
        manage = token_of(link["preferences_url"])
        assert unsubscribe != manage
        assert link["headers"]["List-Unsubscribe"] == f"<{link['unsubscribe_url']}>"
        now = datetime.now(UTC)
        for token, purpose, other in (
            (unsubscribe, TokenPurpose.UNSUBSCRIBE, TokenPurpose.MANAGE),
            (manage, TokenPurpose.MANAGE, TokenPurpose.UNSUBSCRIBE),
        ):
            verified = verify_token(RING, purpose, token, now=now)
            assert verified.claims.contact_id == link["contact_id"]
            assert verified.claims.topic == newsletter
            assert verified.claims.campaign_id == "spring-26"
            assert verified.claims.pending_event is None
            with pytest.raises(BadSignature):
                verify_token(RING, other, token, now=now)

    def test_token_is_a_manage_token_not_a_confirmation(
        self, client: TestClient, links_headers: Headers
    ) -> None:
        link = post_link(client, links_headers, {"email": ADA})

        token = token_of(link["unsubscribe_url"])
        with pytest.raises(BadSignature):
            verify_token(RING, TokenPurpose.CONFIRM, token, now=datetime.now(UTC))

    def test_without_topic_the_token_means_all_marketing(
        self, client: TestClient, links_headers: Headers
    ) -> None:
        link = post_link(client, links_headers, {"email": ADA})

        assert link["topic"] is None
        token = token_of(link["unsubscribe_url"])
        claims = verify_token(RING, TokenPurpose.UNSUBSCRIBE, token, now=datetime.now(UTC)).claims
        assert claims.topic is None
        assert claims.campaign_id is None

    def test_no_address_anywhere_in_the_urls(
        self, client: TestClient, links_headers: Headers, newsletter: str
    ) -> None:
        address = "ada.lovelace@example.com"
        link = post_link(client, links_headers, {"email": address, "topic": newsletter})

        for url in (link["unsubscribe_url"], link["preferences_url"]):
            token = token_of(url)
            for text in (url, token_payload(token).decode()):
                for fragment in (address, quote(address, safe=""), "ada.lovelace", "example.com"):
                    assert fragment not in text
            assert not urlsplit(url).query
            assert not urlsplit(url).fragment

    def test_contact_id_in_the_token_is_opaque(
        self, client: TestClient, links_headers: Headers, database: Database
    ) -> None:
        link = post_link(client, links_headers, {"email": ADA})

        with database.transaction(write=False) as session:
            contact = session.exec(select(Contact)).one()
        body = json.loads(token_payload(token_of(link["unsubscribe_url"])))
        assert body["c"] == contact.public_id == link["contact_id"]
        assert body["c"] != str(contact.id)
        assert not body["c"].isdigit()

    def test_mailto_is_added_when_configured(self, database_url: str, database: Database) -> None:
        settings = make_settings(database_url, unsubscribe_mailto="unsubscribe@example.com")
        headers = issue_key(database, Scope.LINKS)
        with TestClient(create_app(settings)) as client:
            link = post_link(client, headers, {"email": ADA})

        token = token_of(link["unsubscribe_url"])
        assert link["headers"]["List-Unsubscribe"] == (
            f"<{link['unsubscribe_url']}>, "
            f"<mailto:unsubscribe@example.com?subject=unsubscribe%20{token}>"
        )
        assert link["headers"]["List-Unsubscribe-Post"] == ONE_CLICK

    def test_no_mailto_part_when_not_configured(
        self, client: TestClient, links_headers: Headers
    ) -> None:
        link = post_link(client, links_headers, {"email": ADA})

        assert "mailto:" not in link["headers"]["List-Unsubscribe"]
        assert "," not in link["headers"]["List-Unsubscribe"]

    def test_unknown_address_gets_a_contact_and_no_subscription(
        self,
        client: TestClient,
        links_headers: Headers,
        reader_headers: Headers,
        database: Database,
        newsletter: str,
    ) -> None:
        before = row_counts(database)

        link = post_link(client, links_headers, {"email": "New@Example.com", "topic": newsletter})

        (found,) = lookup(client, reader_headers, "new@example.com")
        assert found["contact_id"] == link["contact_id"]
        assert found["subscriptions"] == []
        assert found["suppressed"] is False
        # Only the contact is new: no subscription, no suppression, no audit event.
        assert row_counts(database) == {**before, "Contact": before["Contact"] + 1}

    def test_known_address_keeps_its_contact_and_state(
        self,
        client: TestClient,
        links_headers: Headers,
        writer_headers: Headers,
        reader_headers: Headers,
        newsletter: str,
    ) -> None:
        change = record_change(client, writer_headers, ADA, "subscribed", topic=newsletter)
        before = lookup(client, reader_headers, ADA)

        link = post_link(client, links_headers, {"email": "ADA@example.com", "topic": newsletter})

        assert link["contact_id"] == change["contact_id"]
        assert lookup(client, reader_headers, ADA) == before

    def test_unknown_topic_is_422_and_creates_nothing(
        self, client: TestClient, links_headers: Headers, database: Database
    ) -> None:
        before = row_counts(database)

        response = client.post(
            "/v1/links", headers=links_headers, json={"email": ADA, "topic": "no-such-topic"}
        )

        problem = assert_problem(response, 422, "unknown-topic")
        assert any(field.endswith("topic") for field in error_fields(problem))
        assert row_counts(database) == before

    @pytest.mark.parametrize(
        "body",
        [
            {"email": "not an address"},
            {"email": "ada@example.com\r\nBcc: eve@example.com"},
            {"email": ADA, "topic": "Not A Key"},
            {"email": ADA, "campaign_id": "line\nbreak"},
            {"email": ADA, "campaign_id": ""},
            {"email": ADA, "extra": 1},
        ],
    )
    def test_invalid_request_is_422_and_creates_nothing(
        self, client: TestClient, links_headers: Headers, database: Database, body: Json
    ) -> None:
        before = row_counts(database)

        response = client.post("/v1/links", headers=links_headers, json=body)

        assert_problem(response, 422)
        assert row_counts(database) == before

    def test_retry_with_the_same_idempotency_key_replays_the_first_answer(
        self, client: TestClient, links_headers: Headers, database: Database, newsletter: str
    ) -> None:
        headers = {**links_headers, "Idempotency-Key": "send-42-ada"}
        body = {"email": ADA, "topic": newsletter, "campaign_id": "send-42"}
        first = client.post("/v1/links", headers=headers, json=body)
        after_first = row_counts(database)

        retry = client.post("/v1/links", headers=headers, json=body)

        assert first.status_code == retry.status_code == 200
        assert REPLAY_HEADER.lower() not in first.headers
        assert retry.headers[REPLAY_HEADER] == "true"
        assert retry.json() == first.json()
        assert row_counts(database) == after_first
        assert count_rows(database, IdempotencyRecord) == 1

    def test_same_idempotency_key_with_another_body_is_refused(
        self, client: TestClient, links_headers: Headers, database: Database
    ) -> None:
        headers = {**links_headers, "Idempotency-Key": "send-43"}
        post_link(client, headers, {"email": ADA})
        before = row_counts(database)

        response = client.post("/v1/links", headers=headers, json={"email": "bob@example.com"})

        assert_problem(response, 422, "idempotency-key-reused")
        assert row_counts(database) == before


class TestPostLinksBatch:
    def test_answers_in_request_order(
        self, client: TestClient, links_headers: Headers, admin_headers: Headers, newsletter: str
    ) -> None:
        offers = str(make_topic(client, admin_headers, "offers", consent="opt_out")["key"])
        items: list[Json] = [
            {"email": "zed@example.com", "topic": newsletter, "campaign_id": "c-0"},
            {"email": "Amy@Example.com"},
            {"email": "mia@example.com", "topic": offers, "campaign_id": "c-2"},
            {"email": "bob@example.com", "topic": newsletter},
        ]

        answer = post_batch(client, links_headers, items)

        assert [a["email"] for a in answer] == [i["email"] for i in items]
        assert [a["topic"] for a in answer] == [i.get("topic") for i in items]
        now = datetime.now(UTC)
        for item, link in zip(items, answer, strict=True):
            token = token_of(link["unsubscribe_url"])
            assert link["headers"]["List-Unsubscribe"] == f"<{link['unsubscribe_url']}>"
            assert link["headers"]["List-Unsubscribe-Post"] == ONE_CLICK
            claims = verify_token(RING, TokenPurpose.UNSUBSCRIBE, token, now=now).claims
            manage = token_of(link["preferences_url"])
            assert verify_token(RING, TokenPurpose.MANAGE, manage, now=now).claims == claims
            assert claims.contact_id == link["contact_id"]
            assert claims.topic == item.get("topic")
            assert claims.campaign_id == item.get("campaign_id")
        assert len({a["contact_id"] for a in answer}) == len(items)

    def test_duplicate_addresses_share_one_contact(
        self, client: TestClient, links_headers: Headers, database: Database, newsletter: str
    ) -> None:
        items: list[Json] = [
            {"email": "ada@example.com", "topic": newsletter},
            {"email": "bob@example.com"},
            {"email": "ADA@EXAMPLE.COM"},
            {"email": "Ada@example.com", "topic": newsletter, "campaign_id": "again"},
        ]

        answer = post_batch(client, links_headers, items)

        assert [a["email"] for a in answer] == [i["email"] for i in items]
        ada_ids = {answer[i]["contact_id"] for i in (0, 2, 3)}
        assert len(ada_ids) == 1
        assert answer[1]["contact_id"] not in ada_ids
        assert count_rows(database, Contact) == 2
        with database.transaction(write=False) as session:
            ada = session.exec(select(Contact).where(Contact.address == ADA)).one()
        assert ada.address_display == "ada@example.com"

    def test_unknown_topics_are_named_by_position_and_nothing_is_created(
        self, client: TestClient, links_headers: Headers, database: Database, newsletter: str
    ) -> None:
        items: list[Json] = [
            {"email": "a@example.com", "topic": newsletter},
            {"email": "b@example.com", "topic": "gone"},
            {"email": "c@example.com"},
            {"email": "d@example.com", "topic": "also-gone"},
        ]
        before = row_counts(database)

        response = client.post("/v1/links/batch", headers=links_headers, json={"items": items})

        problem = assert_problem(response, 422, "unknown-topic")
        assert error_fields(problem) == ["items[1].topic", "items[3].topic"]
        assert row_counts(database) == before

    def test_invalid_address_is_named_by_position(
        self, client: TestClient, links_headers: Headers, database: Database
    ) -> None:
        items: list[Json] = [{"email": "a@example.com"}, {"email": "not-an-address"}]
        before = row_counts(database)

        response = client.post("/v1/links/batch", headers=links_headers, json={"items": items})

        problem = assert_problem(response, 422)
        assert any("items" in field and "1" in field for field in error_fields(problem))
        assert row_counts(database) == before

    def test_empty_batch_is_422(self, client: TestClient, links_headers: Headers) -> None:
        response = client.post("/v1/links/batch", headers=links_headers, json={"items": []})

        assert_problem(response, 422)

    def test_one_more_than_the_limit_is_413_and_creates_nothing(
        self, client: TestClient, links_headers: Headers, database: Database
    ) -> None:
        items = [{"email": f"r{i}@example.com"} for i in range(MAX_BATCH + 1)]
        before = row_counts(database)

        response = client.post("/v1/links/batch", headers=links_headers, json={"items": items})

        problem = assert_problem(response, 413, "batch-too-large")
        assert f"{MAX_BATCH:,}" in problem["detail"]
        assert row_counts(database) == before

    def test_exactly_the_limit_is_answered_in_order_with_set_based_queries(
        self,
        client: TestClient,
        links_headers: Headers,
        writer_headers: Headers,
        reader_headers: Headers,
        database: Database,
        newsletter: str,
    ) -> None:
        assert MAX_BATCH == 10_000
        # Some known already (one with a subscription), most new, a few repeated.
        record_change(client, writer_headers, "r7@example.com", "subscribed", topic=newsletter)
        items: list[Json] = [{"email": f"r{i}@example.com"} for i in range(9_990)]
        for i, item in enumerate(items):
            if i % 2:
                item["topic"] = newsletter
        # The last ten repeat addresses from the start, for another campaign.
        items += [{"email": f"R{i}@example.com", "campaign_id": "resend"} for i in range(10)]

        started = time.perf_counter()
        with counted_statements(client) as statements:
            answer = post_batch(client, links_headers, items)
        elapsed = time.perf_counter() - started

        assert len(answer) == MAX_BATCH
        assert [a["email"] for a in answer] == [i["email"] for i in items]
        assert [a["topic"] for a in answer] == [i.get("topic") for i in items]
        assert answer[3]["contact_id"] == answer[9_993]["contact_id"]
        assert answer[9_993]["email"] == "R3@example.com"
        assert len({a["contact_id"] for a in answer}) == 9_990
        assert len({a["unsubscribe_url"] for a in answer}) == MAX_BATCH
        assert count_rows(database, Contact) == 9_990
        assert count_rows(database, Subscription) == 1
        (r7,) = lookup(client, reader_headers, "r7@example.com")
        assert r7["contact_id"] == answer[7]["contact_id"]
        assert [s["status"] for s in r7["subscriptions"]] == ["subscribed"]
        assert len(statements) <= BATCH_STATEMENTS, len(statements)
        assert elapsed < BATCH_SECONDS, elapsed
