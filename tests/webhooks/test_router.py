"""`/v1/webhooks` on both engines: admin keys only, the secret shown once and stored sealed,
changes, deletion, the delivery log with its filter and pages, problems for every refusal,
and every change to an endpoint in the audit trail."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.audit.models import AuditEvent
from prefcenter.db import Database
from prefcenter.settings import Settings
from prefcenter.webhooks.addresses import system_resolve
from prefcenter.webhooks.models import WebhookEndpoint
from tests.support.factories import Headers, assert_problem
from tests.support.harness import issue_key, make_settings
from tests.webhooks.helpers import change, create_endpoint, deliveries

URL = "https://hooks.example.com/prefcenter"


def public(address: str) -> Any:
    """A resolver that answers every name with one address (no network in tests)."""
    return lambda host, port: [ipaddress.ip_address(address)]


@pytest.fixture
def settings(database_url: str) -> Settings:
    """As in production: deliveries only to public addresses."""
    return make_settings(database_url)


@pytest.fixture
def client(settings: Settings) -> Any:
    with TestClient(create_app(settings)) as client:
        client.app.state.webhook_resolve = public("93.184.215.14")  # type: ignore[attr-defined]
        yield client


class TestCreate:
    def test_the_secret_is_shown_once_and_stored_sealed(
        self, client: TestClient, admin: Headers, database: Database
    ) -> None:
        created = create_endpoint(client, admin, URL, ["consent.changed", "contact.erased"])
        assert created["id"].startswith("ep_")
        assert created["secret"].startswith("whsec_")
        assert created["events"] == ["consent.changed", "contact.erased"]
        assert created["enabled"] is True
        listed = client.get("/v1/webhooks", headers=admin).json()["webhooks"]
        assert [w["id"] for w in listed] == [created["id"]]
        one = client.get(f"/v1/webhooks/{created['id']}", headers=admin).json()
        for answer in (*listed, one):
            assert "secret" not in answer
            assert created["secret"] not in str(answer)
        with database.transaction(write=False) as session:
            row = session.exec(select(WebhookEndpoint)).one()
        assert created["secret"] not in row.secret
        assert created["secret"][6:] not in row.secret

    @pytest.mark.parametrize(
        ("events", "field"),
        [
            (["consent.changed", "nope"], "events[1]"),
            ([], "events"),
        ],
    )
    def test_bad_event_lists_are_422(
        self, client: TestClient, admin: Headers, events: list[str], field: str
    ) -> None:
        response = client.post("/v1/webhooks", headers=admin, json={"url": URL, "events": events})
        assert_problem(response, 422)
        assert any(e["field"].startswith("events") for e in response.json()["errors"])

    def test_duplicate_types_are_kept_once_and_star_means_every_type(
        self, client: TestClient, admin: Headers
    ) -> None:
        created = create_endpoint(client, admin, URL, ["contact.erased", "contact.erased"])
        assert created["events"] == ["contact.erased"]
        every = create_endpoint(client, admin, URL, ["consent.changed", "*"])
        assert every["events"] == ["*"]

    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("https://user:pw@hooks.example.com/x", "password"),
            ("https://hooks.example.com/x#frag", "fragment"),
            ("https:///x", "host"),
            ("https://hooks.example.com/a b", "spaces"),
            ("http://127.0.0.1:9/x", "loopback"),
            ("http://[::1]/x", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "metadata"),
            ("http://[fd00:ec2::254]/", "metadata"),
            ("http://10.0.0.7/x", "private"),
            ("http://100.64.0.1/x", "CGNAT"),
            ("http://0.0.0.0/x", "unspecified"),
            ("http://[::ffff:127.0.0.1]/x", "loopback"),
            ("http://224.0.0.1/x", "multicast"),
        ],
    )
    def test_urls_deliveries_may_not_reach_are_refused(
        self, client: TestClient, admin: Headers, url: str, why: str, database: Database
    ) -> None:
        response = client.post("/v1/webhooks", headers=admin, json={"url": url, "events": ["*"]})
        assert_problem(response, 422)
        assert response.json()["type"].endswith("webhook-url-refused")
        assert why.lower() in response.json()["detail"].lower()
        with database.transaction(write=False) as session:
            assert session.exec(select(WebhookEndpoint)).all() == []

    def test_other_schemes_are_refused_by_the_schema(
        self, client: TestClient, admin: Headers
    ) -> None:
        for url in ("ftp://hooks.example.com/x", "file:///etc/passwd", "gopher://x.example/"):
            response = client.post(
                "/v1/webhooks", headers=admin, json={"url": url, "events": ["*"]}
            )
            assert_problem(response, 422)
            assert response.json()["errors"][0]["field"] == "url"

    def test_a_name_that_resolves_inward_is_refused(
        self, client: TestClient, admin: Headers
    ) -> None:
        client.app.state.webhook_resolve = public("192.168.1.20")  # type: ignore[attr-defined]
        response = client.post("/v1/webhooks", headers=admin, json={"url": URL, "events": ["*"]})
        assert_problem(response, 422)
        assert "192.168.1.20" in response.json()["detail"]

    def test_a_name_that_does_not_resolve_is_refused(
        self, client: TestClient, admin: Headers
    ) -> None:
        def nowhere(host: str, port: int) -> list[Any]:
            raise OSError("no such name")

        client.app.state.webhook_resolve = nowhere  # type: ignore[attr-defined]
        response = client.post("/v1/webhooks", headers=admin, json={"url": URL, "events": ["*"]})
        assert_problem(response, 422)

    @pytest.mark.parametrize("host", ["bad\x80host.example", "a" * 64 + ".example"])
    def test_a_host_no_resolver_can_encode_is_refused(
        self, client: TestClient, admin: Headers, host: str
    ) -> None:
        # The system resolver: IDNA refuses these names before any lookup is sent.
        client.app.state.webhook_resolve = system_resolve  # type: ignore[attr-defined]
        url = f"https://{host}/hooks"
        response = client.post("/v1/webhooks", headers=admin, json={"url": url, "events": ["*"]})
        assert_problem(response, 422)
        assert response.json()["type"].endswith("webhook-url-refused")

    def test_private_addresses_are_allowed_when_the_setting_says_so(
        self, database_url: str, admin: Headers
    ) -> None:
        settings = make_settings(database_url, webhooks_allow_private=True)
        with TestClient(create_app(settings)) as allowed:
            created = create_endpoint(allowed, admin, "http://127.0.0.1:9/x")
        assert created["url"] == "http://127.0.0.1:9/x"

    def test_an_idempotency_key_is_refused_where_the_answer_holds_a_secret(
        self, client: TestClient, admin: Headers
    ) -> None:
        response = client.post(
            "/v1/webhooks",
            headers={**admin, "Idempotency-Key": "k1"},
            json={"url": URL, "events": ["*"]},
        )
        assert_problem(response, 422)


class TestAccess:
    def test_only_admin_keys(self, client: TestClient, database: Database) -> None:
        writer = issue_key(database, Scope.CONSENT_WRITE, Scope.AUDIT_READ)
        for method, path in (
            ("POST", "/v1/webhooks"),
            ("GET", "/v1/webhooks"),
            ("GET", "/v1/webhooks/ep_0"),
            ("PATCH", "/v1/webhooks/ep_0"),
            ("DELETE", "/v1/webhooks/ep_0"),
            ("POST", "/v1/webhooks/ep_0/rotate-secret"),
            ("GET", "/v1/webhooks/ep_0/deliveries"),
            ("POST", "/v1/webhooks/ep_0/replay"),
        ):
            body = {"url": URL, "events": ["*"], "after_seq": 0} if method != "GET" else None
            assert_problem(client.request(method, path, json=body), 401)
            assert_problem(client.request(method, path, headers=writer, json=body), 403)

    def test_unknown_endpoints_are_404(self, client: TestClient, admin: Headers) -> None:
        for method, path, body in (
            ("GET", "/v1/webhooks/ep_nope", None),
            ("PATCH", "/v1/webhooks/ep_nope", {"enabled": False}),
            ("DELETE", "/v1/webhooks/ep_nope", None),
            ("POST", "/v1/webhooks/ep_nope/rotate-secret", None),
            ("GET", "/v1/webhooks/ep_nope/deliveries", None),
            ("POST", "/v1/webhooks/ep_nope/replay", {"after_seq": 0}),
        ):
            assert_problem(client.request(method, path, headers=admin, json=body), 404)


class TestChange:
    def test_patch_changes_only_what_is_given_and_rechecks_the_url(
        self, client: TestClient, admin: Headers
    ) -> None:
        created = create_endpoint(client, admin, URL, ["consent.changed"])
        path = f"/v1/webhooks/{created['id']}"
        changed = client.patch(path, headers=admin, json={"events": ["contact.erased"]}).json()
        assert changed["events"] == ["contact.erased"]
        assert changed["url"] == URL
        assert_problem(client.patch(path, headers=admin, json={"url": "http://127.0.0.1/x"}), 422)
        assert client.get(path, headers=admin).json()["url"] == URL
        assert_problem(client.patch(path, headers=admin, json={"enabled": "no"}), 422)
        assert_problem(client.patch(path, headers=admin, json={"secret": "whsec_x"}), 422)

    def test_disabling_fails_what_is_pending_and_enabling_clears_the_reason(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
    ) -> None:
        created = create_endpoint(client, admin, URL)
        change(client, writer, "ada@example.com", "subscribed")
        path = f"/v1/webhooks/{created['id']}"
        off = client.patch(path, headers=admin, json={"enabled": False}).json()
        assert off["enabled"] is False
        assert off["disabled_reason"] == "disabled by an admin"
        assert [r.status for r in deliveries(database)] == ["failed"]
        change(client, writer, "ada@example.com", "unsubscribed")
        assert len(deliveries(database)) == 1  # a disabled endpoint gets nothing
        on = client.patch(path, headers=admin, json={"enabled": True}).json()
        assert (on["enabled"], on["disabled_reason"], on["disabled_at"]) == (True, None, None)

    def test_delete_takes_the_log_with_it(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
    ) -> None:
        created = create_endpoint(client, admin, URL)
        change(client, writer, "ada@example.com", "subscribed")
        path = f"/v1/webhooks/{created['id']}"
        assert client.delete(path, headers=admin).status_code == 204
        assert_problem(client.get(path, headers=admin), 404)
        assert deliveries(database) == []

    def test_rotation_answers_a_new_secret_and_when_the_old_one_stops(
        self, client: TestClient, admin: Headers
    ) -> None:
        created = create_endpoint(client, admin, URL)
        response = client.post(f"/v1/webhooks/{created['id']}/rotate-secret", headers=admin)
        assert response.status_code == 200, response.text
        rotated = response.json()
        assert rotated["secret"].startswith("whsec_")
        assert rotated["secret"] != created["secret"]
        one = client.get(f"/v1/webhooks/{created['id']}", headers=admin).json()
        assert one["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]

    def test_every_change_is_in_the_audit_trail_without_the_secret(
        self, client: TestClient, admin: Headers, database: Database
    ) -> None:
        created = create_endpoint(client, admin, URL)
        path = f"/v1/webhooks/{created['id']}"
        client.patch(path, headers=admin, json={"description": "the CRM"})
        rotated = client.post(f"{path}/rotate-secret", headers=admin).json()
        client.post(f"{path}/replay", headers=admin, json={"after_seq": 0})
        client.delete(path, headers=admin)
        events = client.get("/v1/audit", headers=admin).json()["events"]
        hooks = [e for e in events if e["kind"] == "webhook_endpoint"]
        assert [e["outcome"] for e in hooks] == [
            "created",
            "updated",
            "secret_rotated",
            "replayed",
            "deleted",
        ]
        assert {e["context"]["endpoint"] for e in hooks} == {created["id"]}
        assert all(e["actor"].startswith("api_key:") for e in hooks)
        with database.transaction(write=False) as session:
            trail = b"".join(e.canonical for e in session.exec(select(AuditEvent)))
        assert created["secret"].encode() not in trail
        assert rotated["secret"] not in str(events)


class TestDeliveryLog:
    def test_filter_by_status_and_page_through(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
    ) -> None:
        created = create_endpoint(client, admin, URL)
        for n in range(5):
            change(client, writer, f"p{n}@example.com", "subscribed")
        path = f"/v1/webhooks/{created['id']}/deliveries"
        first = client.get(path, headers=admin, params={"limit": 2}).json()
        assert len(first["deliveries"]) == 2
        assert first["next_before"] is not None
        second = client.get(
            path, headers=admin, params={"limit": 2, "before": first["next_before"]}
        ).json()
        rest = client.get(
            path, headers=admin, params={"limit": 2, "before": second["next_before"]}
        ).json()
        assert rest["next_before"] is None
        ids = [d["id"] for page in (first, second, rest) for d in page["deliveries"]]
        assert ids == sorted(ids, reverse=True)
        assert len(ids) == 5
        delivery = first["deliveries"][0]
        assert delivery["status"] == "pending"
        assert delivery["type"] == "consent.changed"
        assert delivery["webhook_id"] == f"msg_{delivery['event_id']}.consent.changed"
        assert isinstance(delivery["seq"], int)
        assert delivery["log"] == []
        pending = client.get(path, headers=admin, params={"status": "pending"}).json()
        assert len(pending["deliveries"]) == 5
        assert client.get(path, headers=admin, params={"status": "delivered"}).json() == {
            "deliveries": [],
            "next_before": None,
        }
        assert_problem(client.get(path, headers=admin, params={"status": "sent"}), 422)
        assert_problem(client.get(path, headers=admin, params={"limit": 501}), 422)
