"""`GET /metrics`: who may read it, what it counts, and that no label ever holds a token, an
address or a path someone typed."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.monitoring.listener import metrics_listener
from prefcenter.settings import Settings
from tests.audit.tampering import tamper
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_head_seq,
    issue_links,
    make_topic,
    record_change,
    token_of,
)
from tests.support.harness import issue_key
from tests.webhooks.helpers import create_endpoint

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
WINDOW = 12  # no run of this many characters of a token may appear in the metrics


@pytest.fixture
def metrics_headers(database: Database) -> Headers:
    return issue_key(database, Scope.METRICS, name="prometheus")


@pytest.fixture
def links_headers(database: Database) -> Headers:
    return issue_key(database, Scope.LINKS, name="mailer")


def scrape(client: TestClient, headers: Headers) -> str:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.text


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels (and any others): 0 when there is
    none yet."""
    return sum(
        float(found.value)
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name and all(found.labels.get(k) == v for k, v in labels.items())
    )


def label_values(text: str) -> set[str]:
    return {
        value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        for value in found.labels.values()
    }


class TestWhoMayRead:
    def test_without_a_key_is_401(self, client: TestClient) -> None:
        assert_problem(client.get("/metrics"), 401, "unauthenticated")

    def test_a_key_without_the_scope_is_403(self, client: TestClient, database: Database) -> None:
        headers = issue_key(database, Scope.CONSENT_READ, Scope.ELIGIBILITY)

        assert_problem(client.get("/metrics", headers=headers), 403, "forbidden")

    def test_the_metrics_scope_reads_prometheus_text(
        self, client: TestClient, metrics_headers: Headers
    ) -> None:
        response = client.get("/metrics", headers=metrics_headers)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "# TYPE prefcenter_http_requests_total counter" in response.text

    def test_an_admin_key_reads_it_too(self, client: TestClient, admin_headers: Headers) -> None:
        assert client.get("/metrics", headers=admin_headers).status_code == 200

    def test_it_is_in_the_api_description(self, client: TestClient) -> None:
        assert "get" in client.get("/openapi.json").json()["paths"]["/metrics"]


class TestRequests:
    def test_counted_by_route_template_and_status(
        self, client: TestClient, metrics_headers: Headers, admin_headers: Headers
    ) -> None:
        labels = {"method": "GET", "route": "/v1/topics/{key}", "status": "404"}
        before = sample(scrape(client, metrics_headers), "prefcenter_http_requests_total", **labels)

        for key in ("one", "two", "three"):
            assert client.get(f"/v1/topics/{key}", headers=admin_headers).status_code == 404
        text = scrape(client, metrics_headers)

        assert sample(text, "prefcenter_http_requests_total", **labels) == before + 3
        assert "one" not in label_values(text)
        count = sample(
            text,
            "prefcenter_http_request_duration_seconds_count",
            method="GET",
            route="/v1/topics/{key}",
        )
        assert count >= 3

    def test_unknown_paths_share_one_label(
        self, client: TestClient, metrics_headers: Headers
    ) -> None:
        client.get("/no/such/place-4b1d")
        client.request("BREW", "/coffee-4b1d")
        text = scrape(client, metrics_headers)

        assert "4b1d" not in text
        assert sample(text, "prefcenter_http_requests_total", route="unmatched", status="404") >= 1
        assert sample(text, "prefcenter_http_requests_total", method="other") >= 1

    def test_no_label_holds_a_token_or_an_address(
        self,
        client: TestClient,
        metrics_headers: Headers,
        admin_headers: Headers,
        links_headers: Headers,
    ) -> None:
        make_topic(client, admin_headers)
        address = "leak.check@example.org"
        record_change(client, admin_headers, address, "subscribed", topic="newsletter")
        links = issue_links(client, links_headers, address, topic="newsletter")
        tokens = [token_of(links["unsubscribe_url"]), token_of(links["preferences_url"])]
        for token in tokens:
            for prefix in ("u", "p"):
                client.get(f"/{prefix}/{token}")
                client.get(f"/{prefix}/{token}x")  # a broken link too
        client.post(f"/u/{tokens[0]}", content=ONE_CLICK, headers=FORM)
        client.get(f"/v1/contacts/{address}", headers=admin_headers)
        text = scrape(client, metrics_headers)

        for token in tokens:
            windows = {token[i : i + WINDOW] for i in range(len(token) - WINDOW + 1)}
            assert not [w for w in windows if w in text]
        assert "example.org" not in text
        assert "leak" not in text
        recipient_routes = {v for v in label_values(text) if re.match(r"/[upc]/", v)}
        assert recipient_routes <= {"/u/{token}", "/p/{token}", "/c/{token}"}
        assert sample(text, "prefcenter_http_requests_total", route="/u/{token}") >= 1
        assert sample(text, "prefcenter_http_requests_total", route="/p/{token}") >= 1


class TestWhatIsCounted:
    def test_a_consent_change_by_source_and_outcome(
        self, client: TestClient, metrics_headers: Headers, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers)
        name = "prefcenter_consent_changes_total"
        applied = {"source": "admin", "outcome": "applied"}
        unchanged = {"source": "admin", "outcome": "unchanged"}
        text = scrape(client, metrics_headers)
        before = sample(text, name, **applied), sample(text, name, **unchanged)

        record_change(client, admin_headers, "a@example.com", "subscribed", topic="newsletter")
        record_change(client, admin_headers, "a@example.com", "subscribed", topic="newsletter")
        text = scrape(client, metrics_headers)

        assert sample(text, name, **applied) == before[0] + 1
        assert sample(text, name, **unchanged) == before[1] + 1

    def test_an_import_counts_its_changes(
        self, client: TestClient, metrics_headers: Headers, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers)
        labels = {"source": "import", "outcome": "applied"}
        before = sample(
            scrape(client, metrics_headers), "prefcenter_consent_changes_total", **labels
        )
        body = b"email,status\ni1@example.com,subscribed\ni2@example.com,unsubscribed\n"

        response = client.post(
            "/v1/imports",
            params={"topic": "newsletter", "source": "crm-export"},
            headers={**admin_headers, "Content-Type": "text/csv"},
            content=body,
        )
        assert response.status_code == 200, response.text
        text = scrape(client, metrics_headers)

        assert sample(text, "prefcenter_consent_changes_total", **labels) == before + 2
        assert "crm-export" not in text

    def test_a_change_rolled_back_is_not_counted(
        self, client: TestClient, metrics_headers: Headers, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers)
        text = scrape(client, metrics_headers)
        before = sample(text, "prefcenter_consent_changes_total")
        key = {"Idempotency-Key": "same-key-twice", **admin_headers}
        first = {"email": "b@example.com", "status": "subscribed", "topic": "newsletter"}
        assert client.post("/v1/consents", headers=key, json=first).status_code == 200
        # Same key, another body: refused after the transaction began, nothing kept.
        other = {**first, "email": "c@example.com"}
        assert client.post("/v1/consents", headers=key, json=other).status_code >= 400

        after = sample(scrape(client, metrics_headers), "prefcenter_consent_changes_total")
        assert after == before + 1

    def test_a_one_click_opt_out(
        self,
        client: TestClient,
        metrics_headers: Headers,
        admin_headers: Headers,
        links_headers: Headers,
    ) -> None:
        make_topic(client, admin_headers)
        record_change(client, admin_headers, "d@example.com", "subscribed", topic="newsletter")
        url = issue_links(client, links_headers, "d@example.com", topic="newsletter")
        path = urlsplit(url["unsubscribe_url"]).path
        text = scrape(client, metrics_headers)
        one_clicks = sample(text, "prefcenter_one_click_optouts_total", outcome="applied")
        changes = sample(
            text, "prefcenter_consent_changes_total", source="one_click", outcome="applied"
        )

        assert client.post(path, content=ONE_CLICK, headers=FORM).status_code == 200
        text = scrape(client, metrics_headers)

        assert sample(text, "prefcenter_one_click_optouts_total", outcome="applied") == (
            one_clicks + 1
        )
        assert sample(
            text, "prefcenter_consent_changes_total", source="one_click", outcome="applied"
        ) == (changes + 1)
        status = {"method": "POST", "route": "/u/{token}", "status": "200"}
        assert sample(text, "prefcenter_http_requests_total", **status) >= 1

    def test_eligibility_addresses_answered(
        self, client: TestClient, metrics_headers: Headers, admin_headers: Headers
    ) -> None:
        make_topic(client, admin_headers)
        name = "prefcenter_eligibility_addresses_total"
        text = scrape(client, metrics_headers)
        batch, stream = sample(text, name, endpoint="batch"), sample(text, name, endpoint="stream")
        emails = ["e1@example.com", "e2@example.com", "not an address"]

        answer = client.post(
            "/v1/eligibility",
            headers=admin_headers,
            json={"topic": "newsletter", "emails": emails},
        )
        assert answer.status_code == 200
        streamed = client.post(
            "/v1/eligibility/stream?topic=newsletter",
            headers={**admin_headers, "Content-Type": "text/plain"},
            content="\n".join(emails).encode(),
        )
        assert streamed.status_code == 200
        text = scrape(client, metrics_headers)

        assert sample(text, name, endpoint="batch") == batch + 3
        assert sample(text, name, endpoint="stream") == stream + 3

    def test_the_audit_head_and_the_last_verify(
        self,
        client: TestClient,
        metrics_headers: Headers,
        admin_headers: Headers,
        database: Database,
    ) -> None:
        make_topic(client, admin_headers)
        record_change(client, admin_headers, "f@example.com", "subscribed", topic="newsletter")

        assert client.get("/v1/audit/verify", headers=admin_headers).json()["ok"] is True
        text = scrape(client, metrics_headers)

        assert sample(text, "prefcenter_audit_head_seq") == audit_head_seq(database)
        assert audit_head_seq(database) > 0
        assert sample(text, "prefcenter_audit_last_verify_failed") == 0
        assert sample(text, "prefcenter_audit_last_verify_timestamp_seconds") > 0
        assert sample(text, "prefcenter_database_up") == 1

    def test_a_failed_verify(
        self,
        client: TestClient,
        metrics_headers: Headers,
        admin_headers: Headers,
        database_url: str,
    ) -> None:
        make_topic(client, admin_headers)
        record_change(client, admin_headers, "h@example.com", "subscribed", topic="newsletter")
        tamper(database_url, "UPDATE audit_event SET source = 'import' WHERE seq = 1")

        assert client.get("/v1/audit/verify", headers=admin_headers).json()["ok"] is False
        assert sample(scrape(client, metrics_headers), "prefcenter_audit_last_verify_failed") == 1

    def test_the_outbox_from_the_database(
        self,
        client: TestClient,
        metrics_headers: Headers,
        admin_headers: Headers,
        database: Database,
    ) -> None:
        make_topic(client, admin_headers)
        # A resolver that answers with a public address: no network in tests.
        client.app.state.webhook_resolve = lambda host, port: [  # type: ignore[attr-defined]
            ipaddress.ip_address("93.184.215.14")
        ]
        create_endpoint(client, admin_headers, "https://hooks.example.com/in", ["*"])
        record_change(client, admin_headers, "g@example.com", "subscribed", topic="newsletter")
        text = scrape(client, metrics_headers)

        assert sample(text, "prefcenter_outbox_queued_messages", kind="webhook") == 1
        assert sample(text, "prefcenter_outbox_oldest_queued_age_seconds", kind="webhook") >= 0
        assert sample(text, "prefcenter_outbox_failed_messages", kind="webhook") == 0
        assert sample(text, "prefcenter_outbox_queued_messages", kind="mail") == 0

    def test_database_connections_in_use_are_given_back(
        self, client: TestClient, metrics_headers: Headers
    ) -> None:
        # The scrape's own session is the only one open while it is built.
        text = scrape(client, metrics_headers)

        assert sample(text, "prefcenter_db_connections_in_use") >= 0
        assert "prefcenter_db_session_waits_total" in text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TestSeparateListener:
    def test_the_app_then_has_no_metrics(self, settings: Settings, database: Database) -> None:
        moved = settings.model_copy(update={"metrics_listen": "127.0.0.1:9"})
        headers = issue_key(database, Scope.ADMIN)
        with TestClient(create_app(moved)) as client:
            assert client.get("/metrics", headers=headers).status_code == 404
            assert "/metrics" not in client.get("/openapi.json").json()["paths"]

    def test_the_listener_serves_without_a_key(self, settings: Settings) -> None:
        moved = settings.model_copy(update={"metrics_listen": f"127.0.0.1:{_free_port()}"})
        with metrics_listener(moved) as server:
            assert server is not None
            response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics")

        assert response.status_code == 200
        assert sample(response.text, "prefcenter_database_up") == 1
        assert "prefcenter_audit_head_seq" in response.text

    @pytest.mark.parametrize("value", ["9100", "host:", ":9100", "host:http", "h:70000"])
    def test_a_bad_address_is_refused(self, settings: Settings, value: str) -> None:
        with pytest.raises(ValueError, match="host:port"):
            Settings(database_url=settings.database_url, metrics_listen=value)
