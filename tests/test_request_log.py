"""X-Request-ID on every answer, and the one log line per request: its route template, status,
duration and id, and never a token or an address."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.logs import REQUEST_LOGGER, JsonFormatter, RedactingFilter, TextFormatter
from prefcenter.settings import Settings
from tests.support.factories import issue_links, make_topic, token_of
from tests.support.harness import issue_key

GENERATED = re.compile(r"[0-9a-f]{32}")
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == REQUEST_LOGGER]


def written(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """The line as a handler of `prefcenter serve` writes it: filtered, then formatted."""
    RedactingFilter().filter(record)
    return formatter.format(record)


class TestRequestId:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/healthz"), ("GET", "/v1/topics"), ("GET", "/nowhere"), ("GET", "/u/bad")],
    )
    def test_every_answer_carries_one(self, client: TestClient, method: str, path: str) -> None:
        response = client.request(method, path)

        assert GENERATED.fullmatch(response.headers["x-request-id"])

    def test_each_request_gets_its_own(self, client: TestClient) -> None:
        ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}

        assert len(ids) == 3

    @pytest.mark.parametrize("sent", ["abc", "req-1.2_3", "A" * 64])
    def test_a_safe_incoming_id_is_echoed(self, client: TestClient, sent: str) -> None:
        response = client.get("/healthz", headers={"X-Request-ID": sent})

        assert response.headers["x-request-id"] == sent

    @pytest.mark.parametrize(
        "sent", ["A" * 65, "has space", "<script>", "a/b", "ünï", "a\tb", "id;drop"]
    )
    def test_an_unsafe_incoming_id_is_replaced(self, client: TestClient, sent: str) -> None:
        response = client.get("/healthz", headers=[(b"X-Request-ID", sent.encode("utf-8"))])

        assert GENERATED.fullmatch(response.headers["x-request-id"])
        assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]

    def test_an_unexpected_error_carries_one_too(self, settings: Settings) -> None:
        app = create_app(settings)

        @app.get("/boom")
        def boom() -> None:
            raise RuntimeError("boom")

        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/boom", headers={"X-Request-ID": "trace-500"})

        assert response.status_code == 500
        assert response.headers["x-request-id"] == "trace-500"


class TestRequestLine:
    def test_route_status_duration_and_id(
        self, client: TestClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
            client.get("/v1/topics/newsletter", headers={"X-Request-ID": "line-1"})

        [record] = request_lines(caplog)
        line = written(record, TextFormatter())
        assert re.fullmatch(
            r'INFO prefcenter\.request: testclient:50000 - "GET /v1/topics/newsletter '
            r'HTTP/1\.1" 401 /v1/topics/\{key\} \d+(\.\d)?ms id=line-1',
            line,
        ), line
        fields = json.loads(written(record, JsonFormatter()))
        assert fields["logger"] == REQUEST_LOGGER
        assert fields["route"] == "/v1/topics/{key}"
        assert fields["status"] == 401
        assert fields["method"] == "GET"
        assert fields["request_id"] == "line-1"
        assert isinstance(fields["duration_ms"], float)
        assert isinstance(fields["process"], int)

    def test_no_token_and_no_address_in_the_line(
        self, client: TestClient, caplog: pytest.LogCaptureFixture, database: Database
    ) -> None:
        admin = issue_key(database, Scope.ADMIN)
        make_topic(client, admin)
        address = "Private.Person@example.org"
        client.post(
            "/v1/consents",
            headers=admin,
            json={"email": address, "status": "subscribed", "topic": "newsletter"},
        )
        links = issue_links(client, admin, address, topic="newsletter")
        tokens = [token_of(links["unsubscribe_url"]), token_of(links["preferences_url"])]
        # The set-up's own lines are kept too when an earlier test left the logger at INFO.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
            client.get(f"/u/{tokens[0]}")
            client.post(f"/u/{tokens[0]}", content=ONE_CLICK, headers=FORM)
            client.get(f"/p/{tokens[1]}?lang=de")
            client.get(f"/v1/contacts/{address}", headers=admin)
            # A token sent as the request id: echoed to its sender, but not logged.
            client.get("/healthz", headers={"X-Request-ID": tokens[0]})

        records = request_lines(caplog)
        assert len(records) == 5
        for formatter in (TextFormatter(), JsonFormatter()):
            text = "\n".join(written(logging.makeLogRecord(r.__dict__), formatter) for r in records)
            for token in tokens:
                assert token[:20] not in text
                assert token[-20:] not in text
            assert "example.org" not in text.lower()
            assert "private" not in text.lower()
            assert "/u/{token}" in text
            assert "/p/{token}" in text
            assert "/v1/contacts/{contact_id}" in text
