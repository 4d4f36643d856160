"""Bad input gets an RFC 9457 problem with a useful detail, never a 500, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.consent.schemas import MAX_EVIDENCE_DEPTH
from prefcenter.contacts.addresses import MAX_ADDRESS_OCTETS
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.support.factories import (
    Headers,
    Json,
    assert_problem,
    error_fields,
    lookup,
    record_change,
    revoke_key,
    row_counts,
)
from tests.support.harness import issue_key, make_settings

ADA = "ada@example.com"
BODY_LIMIT = 4096
# PUT is idempotent by method; the other two write (or read) through a JSON body.
JSON_ENDPOINTS = [
    ("POST", "/v1/consents"),
    ("PUT", "/v1/topics/newsletter"),
    ("POST", "/v1/contacts/lookup"),
]


def nested(depth: int) -> Json:
    """An evidence object `depth` levels deep: {"a": {"a": … {"a": 1}}}."""
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return {"a": value}


def padded(body: Json, size: int) -> bytes:
    """`body` as JSON, padded with trailing whitespace (still valid JSON) to exactly `size`."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


@pytest.fixture
def small_limit_app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(make_settings(settings.database_url, max_body_bytes=BODY_LIMIT))
    yield app
    app.state.database.dispose()


@pytest.fixture
def small_limit_client(small_limit_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(small_limit_app) as client:
        yield client


class TestMalformedJson:
    def test_is_400_and_changes_nothing(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        for method, path in JSON_ENDPOINTS:
            for raw in [b'{"email": "ada@example.com",', b"{'email': 1}", b"\xff\xfe", b""]:
                with subtests.test(method=method, path=path, raw=raw):
                    response = client.request(
                        method,
                        path,
                        headers={**admin_headers, "Content-Type": "application/json"},
                        content=raw,
                    )

                    problem = assert_problem(response, 400 if raw else 422)
                    if raw:
                        assert problem["type"].endswith(":malformed-json")
                        assert "JSON" in problem["detail"]
        assert row_counts(database) == before

    def test_json_that_is_not_an_object_is_422(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        for raw in [b"[]", b'"ada@example.com"', b"null", b"42"]:
            with subtests.test(raw=raw):
                response = client.post(
                    "/v1/consents",
                    headers={**writer_headers, "Content-Type": "application/json"},
                    content=raw,
                )

                assert_problem(response, 422, "validation")
        assert row_counts(database) == before


class TestUnknownFields:
    def test_are_422_naming_the_field_and_change_nothing(
        self,
        client: TestClient,
        admin_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        bodies: list[Json] = [
            {"email": ADA, "status": "unsubscribed", "topics": ["a"]},
            {"name": "News", "kind": "marketing", "consent": "opt_in", "topics": ["a"]},
            {"emails": [ADA], "topics": ["a"]},
        ]
        for (method, path), body in zip(JSON_ENDPOINTS, bodies, strict=True):
            with subtests.test(path=path):
                response = client.request(method, path, headers=admin_headers, json=body)

                problem = assert_problem(response, 422, "validation")
                assert error_fields(problem) == ["topics"]
                assert "topics" in problem["detail"]
        assert row_counts(database) == before


class TestBadAddress:
    def test_control_character_is_422_naming_email(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        cases = {
            "CR": "ada@example.com\r",
            "LF": "ada@example.com\nBcc: all@example.com",
            "CRLF": "ada@example.com\r\nBcc: all@example.com",
            "NUL": "ada\x00@example.com",
            "TAB": "ada@example.com\t",
            "DEL": "ada\x7f@example.com",
            "NEL": "ada\x85@example.com",
            "LINE SEPARATOR": "ada\u2028@example.com",
        }
        for name, email in cases.items():
            with subtests.test(name):
                response = client.post(
                    "/v1/consents",
                    headers=writer_headers,
                    json={"email": email, "status": "unsubscribed"},
                )

                problem = assert_problem(response, 422, "validation")
                assert error_fields(problem) == ["email"]
                assert "control character" in problem["detail"]
        assert row_counts(database) == before

    def test_malformed_address_is_422_naming_email(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        for email in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@@example.com",
            "ada@example..com",
            "a b@example.com",
            "<ada@example.com>",
            "Ada <ada@example.com>",
        ]:
            with subtests.test(email=email):
                response = client.post(
                    "/v1/consents",
                    headers=writer_headers,
                    json={"email": email, "status": "unsubscribed"},
                )

                assert error_fields(assert_problem(response, 422, "validation")) == ["email"]
        assert row_counts(database) == before

    def test_non_string_address_is_422(self, client: TestClient, writer_headers: Headers) -> None:
        response = client.post(
            "/v1/consents",
            headers=writer_headers,
            json={"email": ["ada@example.com"], "status": "unsubscribed"},
        )

        assert error_fields(assert_problem(response, 422, "validation")) == ["email"]

    def test_address_of_254_octets_is_accepted(
        self, client: TestClient, writer_headers: Headers
    ) -> None:
        email = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 61
        assert len(email) == MAX_ADDRESS_OCTETS

        answer = record_change(client, writer_headers, email, "unsubscribed")

        assert answer["email"] == email

    def test_address_over_254_octets_is_422(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        cases = {
            "ascii-255": "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 62,
            # 250 characters but 256 octets: the limit counts octets.
            "utf8-256-octets": "ü" * 6
            + "a" * 58
            + "@"
            + "b" * 63
            + "."
            + "c" * 63
            + "."
            + "d" * 59,
            "huge": "a" * 64 + "@" + "b" * 10_000 + ".com",
        }
        for name, email in cases.items():
            with subtests.test(name):
                assert len(email.encode()) > MAX_ADDRESS_OCTETS
                response = client.post(
                    "/v1/consents",
                    headers=writer_headers,
                    json={"email": email, "status": "unsubscribed"},
                )

                problem = assert_problem(response, 422, "validation")
                assert error_fields(problem) == ["email"]
        assert row_counts(database) == before


class TestBadFields:
    def test_bad_occurred_at_is_422(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        newsletter: str,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        occurred_at: object
        for occurred_at in [
            1714564800,  # a Unix time is not RFC 3339 with an offset
            "2024-05-01T12:00:00",  # no offset: ambiguous
            "2024-05-01",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "",
            "0001-01-01T00:00:00+14:00",  # no UTC time exists for it
            "9999-12-31T23:59:59-14:00",
            "2024-05-01T12:00:00+25:00",
        ]:
            with subtests.test(occurred_at=occurred_at):
                response = client.post(
                    "/v1/consents",
                    headers=writer_headers,
                    json={
                        "email": ADA,
                        "topic": newsletter,
                        "status": "subscribed",
                        "occurred_at": occurred_at,
                    },
                )

                problem = assert_problem(response, 422, "validation")
                assert error_fields(problem) == ["occurred_at"]
        assert row_counts(database) == before

    def test_bad_field_is_422_naming_it(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        newsletter: str,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        cases: list[tuple[str, Any]] = [
            ("status", "pending"),
            ("status", "SUBSCRIBED"),
            ("status", None),
            ("topic", "News Letter"),
            ("source", "has space"),
            ("source", "s" * 65),
            ("campaign_id", "spring\x1b[31m"),
            ("campaign_id", "c" * 201),
            ("campaign_id", "line\nbreak"),
            ("campaign_id", ""),
            ("reason", "nul\x00"),
            ("evidence", ["not", "an", "object"]),
            ("evidence", {"k": "nul \x00 inside"}),
            ("evidence", {"nul\x00key": "v"}),
            ("evidence", {"list": [["nul\x00"]]}),
            ("evidence", {"big": "x" * (16 * 1024)}),
            ("evidence", {f"k{i}": i for i in range(101)}),
            ("evidence", nested(MAX_EVIDENCE_DEPTH + 1)),
        ]
        for field, value in cases:
            with subtests.test(field=field, value=repr(value)[:40]):
                body = {"email": ADA, "topic": newsletter, "status": "unsubscribed", field: value}

                response = client.post("/v1/consents", headers=writer_headers, json=body)

                problem = assert_problem(response, 422)
                assert error_fields(problem) == [field]
        assert row_counts(database) == before

    def test_non_finite_number_in_evidence_is_422(
        self,
        client: TestClient,
        writer_headers: Headers,
        database: Database,
        newsletter: str,
        subtests: pytest.Subtests,
    ) -> None:
        before = row_counts(database)
        for number in [b"NaN", b"Infinity", b"-Infinity"]:
            with subtests.test(number=number):
                raw = (
                    b'{"email": "ada@example.com", "topic": "newsletter", "status": "subscribed", '
                    b'"evidence": {"score": [' + number + b"]}}"
                )

                response = client.post(
                    "/v1/consents",
                    headers={**writer_headers, "Content-Type": "application/json"},
                    content=raw,
                )

                assert error_fields(assert_problem(response, 422)) == ["evidence"]
        assert row_counts(database) == before

    def test_evidence_as_deep_as_allowed_is_stored_and_read_back(
        self, client: TestClient, writer_headers: Headers, admin_headers: Headers, newsletter: str
    ) -> None:
        evidence = nested(MAX_EVIDENCE_DEPTH)

        answer = record_change(
            client, writer_headers, ADA, "subscribed", topic=newsletter, evidence=evidence
        )
        # Evidence is read back by a reader of the audit trail (admin implies audit:read).
        response = client.get(f"/v1/contacts/{answer['contact_id']}", headers=admin_headers)

        assert response.status_code == 200, response.text
        assert response.json()["events"][0]["evidence"] == evidence


class TestBodyTooLarge:
    def test_declared_length_over_the_limit_is_413_and_changes_nothing(
        self, small_limit_client: TestClient, writer_headers: Headers, database: Database
    ) -> None:
        before = row_counts(database)
        raw = padded({"email": ADA, "status": "unsubscribed"}, BODY_LIMIT + 1)

        response = small_limit_client.post(
            "/v1/consents",
            headers={**writer_headers, "Content-Type": "application/json"},
            content=raw,
        )

        assert response.request.headers["content-length"] == str(BODY_LIMIT + 1)
        problem = assert_problem(response, 413, "payload-too-large")
        assert str(BODY_LIMIT) in problem["detail"]
        assert row_counts(database) == before

    def test_chunked_body_over_the_limit_is_413_and_changes_nothing(
        self, small_limit_client: TestClient, writer_headers: Headers, database: Database
    ) -> None:
        before = row_counts(database)
        raw = padded({"email": ADA, "status": "unsubscribed"}, BODY_LIMIT * 2)

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(raw), 1000):
                yield raw[start : start + 1000]

        response = small_limit_client.post(
            "/v1/consents",
            headers={**writer_headers, "Content-Type": "application/json"},
            content=chunks(),
        )

        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "payload-too-large")
        assert row_counts(database) == before

    def test_body_streamed_in_small_messages_is_counted_as_a_whole(
        self, small_limit_app: FastAPI, writer_headers: Headers, database: Database
    ) -> None:
        before = row_counts(database)
        raw = padded({"email": ADA, "status": "unsubscribed"}, BODY_LIMIT + 500)
        pieces = [raw[start : start + 1000] for start in range(0, len(raw), 1000)]
        status, headers, body = asyncio.run(
            call_asgi(small_limit_app, "/v1/consents", writer_headers, pieces)
        )

        assert status == 413
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 413
        assert row_counts(database) == before

    def test_body_of_exactly_the_limit_is_accepted(
        self, small_limit_client: TestClient, writer_headers: Headers, database: Database
    ) -> None:
        raw = padded({"email": ADA, "status": "unsubscribed"}, BODY_LIMIT)

        response = small_limit_client.post(
            "/v1/consents",
            headers={**writer_headers, "Content-Type": "application/json"},
            content=raw,
        )

        assert response.status_code == 200, response.text
        (ada,) = lookup(small_limit_client, writer_headers, ADA)
        assert ada["suppressed"] is True


async def call_asgi(
    app: FastAPI, path: str, headers: Headers, pieces: list[bytes]
) -> tuple[int, dict[str, str], bytes]:
    """POST a body as several `http.request` messages without a Content-Length, as a proxy
    streaming a chunked request would."""
    incoming: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    outgoing: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        outgoing.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in outgoing if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in outgoing if m["type"] == "http.response.body")
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, body


class TestRouting:
    def test_unknown_path_is_404_problem(self, client: TestClient, admin_headers: Headers) -> None:
        for path in ["/nope", "/v1", "/v1/consent", "/v2/topics", "/v1/topics/a/b"]:
            assert_problem(client.get(path, headers=admin_headers), 404, "not-found")
            assert_problem(client.get(path), 404, "not-found")

    def test_wrong_method_is_405_problem_with_allow(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        response = client.get("/v1/consents", headers=admin_headers)

        assert_problem(response, 405, "method-not-allowed")
        assert "POST" in response.headers["allow"]

    def test_405_lists_every_method_of_the_path(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        response = client.delete("/v1/topics/newsletter", headers=admin_headers)

        assert_problem(response, 405, "method-not-allowed")
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert {"GET", "PUT"} <= allowed
        assert "DELETE" not in allowed


class TestAuthentication:
    def test_missing_key_is_401_with_www_authenticate(
        self, client: TestClient, database: Database
    ) -> None:
        before = row_counts(database)

        response = client.post("/v1/consents", json={"email": ADA, "status": "unsubscribed"})

        problem = assert_problem(response, 401, "unauthenticated")
        assert "Bearer" in problem["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert row_counts(database) == before

    def test_bad_credentials_are_401(
        self, client: TestClient, database: Database, subtests: pytest.Subtests
    ) -> None:
        before = row_counts(database)
        for authorization in [
            "Basic YWRhOnNlY3JldA==",
            "Bearer",
            "Bearer not-a-key",
            "Bearer pck_" + "A" * 43,
            "Bearer pck_" + "A" * 500,
            "pck_" + "A" * 43,
        ]:
            with subtests.test(authorization=authorization[:20]):
                response = client.post(
                    "/v1/consents",
                    headers={"Authorization": authorization},
                    json={"email": ADA, "status": "unsubscribed"},
                )

                assert_problem(response, 401, "unauthenticated")
                assert "www-authenticate" in response.headers
        assert row_counts(database) == before

    def test_revoked_key_is_401_at_once(
        self, client: TestClient, writer_headers: Headers, database: Database
    ) -> None:
        record_change(client, writer_headers, ADA, "unsubscribed")
        revoke_key(database, writer_headers)
        before = row_counts(database)

        response = client.post(
            "/v1/consents",
            headers=writer_headers,
            json={"email": "bob@example.com", "status": "unsubscribed"},
        )

        problem = assert_problem(response, 401, "unauthenticated")
        assert "revoked" in problem["detail"]
        assert row_counts(database) == before

    def test_key_without_the_scope_is_403(self, client: TestClient, database: Database) -> None:
        links_only = issue_key(database, Scope.LINKS, Scope.AUDIT_READ, name="mailer")
        before = row_counts(database)

        response = client.post(
            "/v1/consents", headers=links_only, json={"email": ADA, "status": "unsubscribed"}
        )

        problem = assert_problem(response, 403, "forbidden")
        assert "consent:write" in problem["detail"]
        assert row_counts(database) == before
