"""`POST /v1/imports` over HTTP on both engines: the report, scopes, and problems."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.support.factories import Headers, assert_problem, make_topic
from tests.support.harness import issue_key

BODY = b"\xef\xbb\xbfemail,status\r\nada@example.com,subscribed\r\nbad,subscribed\r\n"
CSV = {"Content-Type": "text/csv"}


class TestImports:
    def test_answers_the_report(self, client: TestClient, admin_headers: Headers) -> None:
        make_topic(client, admin_headers, "newsletter")

        response = client.post(
            "/v1/imports",
            params={"topic": "newsletter", "source": "crm", "file_name": "people.csv"},
            headers={**admin_headers, **CSV},
            content=BODY,
        )

        assert response.status_code == 200, response.text
        report = response.json()
        assert report["applied"] == {"subscribed": 1, "unsubscribed": 0}
        assert report["invalid"]["count"] == 1
        assert report["invalid"]["sample"][0]["line"] == 3
        assert report["sha256"] == hashlib.sha256(BODY).hexdigest()
        assert report["file_name"] == "people.csv"
        assert report["batches"][0]["status"] == "committed"

    def test_needs_the_admin_scope(
        self, client: TestClient, admin_headers: Headers, database: Database
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        writer = issue_key(database, Scope.CONSENT_WRITE, name="crm")

        assert_problem(
            client.post(
                "/v1/imports",
                params={"topic": "newsletter", "source": "crm"},
                headers={**writer, **CSV},
                content=BODY,
            ),
            403,
        )
        assert_problem(
            client.post(
                "/v1/imports",
                params={"topic": "newsletter", "source": "crm"},
                headers=CSV,
                content=BODY,
            ),
            401,
        )

    def test_an_unknown_topic_is_a_422(self, client: TestClient, admin_headers: Headers) -> None:
        response = client.post(
            "/v1/imports",
            params={"topic": "nope", "source": "crm"},
            headers={**admin_headers, **CSV},
            content=BODY,
        )

        assert_problem(response, 422, "unknown-topic")

    def test_an_unreadable_file_is_a_422(self, client: TestClient, admin_headers: Headers) -> None:
        make_topic(client, admin_headers, "newsletter")

        response = client.post(
            "/v1/imports",
            params={"topic": "newsletter", "source": "crm"},
            headers={**admin_headers, **CSV},
            content=b"who,what\nada@example.com,yes\n",
        )

        assert_problem(response, 422, "unreadable-import")

    def test_a_body_that_is_not_csv_is_a_415(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "newsletter")

        response = client.post(
            "/v1/imports",
            params={"topic": "newsletter", "source": "crm"},
            headers={**admin_headers, "Content-Type": "application/json"},
            content=b"{}",
        )

        assert_problem(response, 415)

    def test_a_body_over_the_request_limit_is_still_imported(
        self, client: TestClient, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        # 8 MiB is the default limit for other requests; imports spool to disk instead.
        # Wide rows: the size matters here, not the number of rows.
        note = "x" * 300
        rows = "".join(f"p{i:05d}@example.com,unsubscribed,{note}\n" for i in range(30_000))
        body = ("email,status,note\n" + rows).encode()
        assert len(body) > 8 * 1024 * 1024

        response = client.post(
            "/v1/imports",
            params={"topic": "newsletter", "source": "crm", "dry_run": "true"},
            headers={**admin_headers, **CSV},
            content=body,
        )

        assert response.status_code == 200, response.text
        assert response.json()["applied"]["unsubscribed"] == 30_000
