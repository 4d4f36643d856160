"""`GET /v1/audit/export`: every matching event streamed as CSV or JSON Lines."""

from __future__ import annotations

import csv
import io

import orjson
import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.audit import export
from prefcenter.db import Database
from tests.support.factories import Headers, assert_problem, audit_events, make_topic, record_change
from tests.support.harness import issue_key

ADA = "ada@example.com"


@pytest.fixture
def auditor_headers(database: Database) -> Headers:
    return issue_key(database, Scope.AUDIT_READ, name="auditor")


@pytest.fixture
def history(client: TestClient, admin_headers: Headers, writer_headers: Headers) -> None:
    make_topic(client, admin_headers, "news")
    record_change(
        client,
        writer_headers,
        ADA,
        "subscribed",
        topic="news",
        source="signup_form",
        evidence={"form": '=HYPERLINK("http://evil.example","click")', "version": 3},
    )
    record_change(client, writer_headers, "bob@example.com", "unsubscribed", topic="news")


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


class TestCsv:
    def test_every_event_with_a_header(
        self, client: TestClient, auditor_headers: Headers, database: Database, history: None
    ) -> None:
        response = client.get("/v1/audit/export", headers=auditor_headers)

        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert response.text.splitlines()[0] == ",".join(export.CSV_HEADER)
        rows = csv_rows(response.text)
        assert [int(r["seq"]) for r in rows] == [e.seq for e in audit_events(database)]

    def test_cells_are_spreadsheet_safe(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        response = client.get(
            "/v1/audit/export", headers=auditor_headers, params={"source": "signup_form"}
        )

        (row,) = csv_rows(response.text)
        # The evidence cell is JSON, which starts with `{`; a formula inside it is inert text.
        assert orjson.loads(row["evidence"]) == {
            "form": '=HYPERLINK("http://evil.example","click")',
            "version": 3,
        }
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@"))

    def test_a_formula_in_a_plain_cell_is_neutralised(
        self, client: TestClient, auditor_headers: Headers, writer_headers: Headers
    ) -> None:
        record_change(
            client,
            writer_headers,
            ADA,
            "unsubscribed",
            campaign_id='=HYPERLINK("http://evil.example")',
        )

        (row,) = csv_rows(client.get("/v1/audit/export", headers=auditor_headers).text)

        assert row["campaign_id"] == '\'=HYPERLINK("http://evil.example")'

    def test_filters_apply(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        response = client.get(
            "/v1/audit/export", headers=auditor_headers, params={"email": "BOB@example.com"}
        )
        assert [r["to_status"] for r in csv_rows(response.text)] == ["unsubscribed"]


class TestJsonLines:
    def test_one_event_a_line_as_in_the_audit_list(
        self, client: TestClient, auditor_headers: Headers, history: None
    ) -> None:
        response = client.get(
            "/v1/audit/export", headers=auditor_headers, params={"format": "jsonl"}
        )
        listed = client.get("/v1/audit", headers=auditor_headers).json()["events"]

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/jsonl")
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        assert lines == listed

    def test_streams_across_chunks(
        self,
        client: TestClient,
        auditor_headers: Headers,
        writer_headers: Headers,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(export, "CHUNK_EVENTS", 2)
        for n in range(5):
            record_change(client, writer_headers, f"p{n}@example.com", "unsubscribed")

        response = client.get(
            "/v1/audit/export", headers=auditor_headers, params={"format": "jsonl"}
        )

        seqs = [orjson.loads(line)["seq"] for line in response.content.splitlines()]
        assert seqs == [e.seq for e in audit_events(database)]


class TestRefused:
    def test_bad_format_or_filter_is_a_422_before_streaming(
        self, client: TestClient, auditor_headers: Headers
    ) -> None:
        for params in ({"format": "xlsx"}, {"email": "nope"}, {"since": "yesterday"}):
            response = client.get("/v1/audit/export", headers=auditor_headers, params=params)
            assert_problem(response, 422)

    def test_needs_the_audit_scope(self, client: TestClient, writer_headers: Headers) -> None:
        assert_problem(client.get("/v1/audit/export", headers=writer_headers), 403)
