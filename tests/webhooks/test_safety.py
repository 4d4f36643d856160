"""What deliveries refuse to do, on both engines: reach an address that is not public (also
when the name pointed elsewhere at creation: DNS rebinding), follow a redirect, keep calling
an endpoint that answered 410 or has failed for five days; and that they connect to the very
address they checked. Rotation: for a day both secrets verify with standardwebhooks."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import WebhookVerificationError

from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings
from prefcenter.webhooks.addresses import Resolve
from tests.support.factories import Headers
from tests.support.harness import make_settings
from tests.support.mail_server import Clock, free_port
from tests.webhooks.helpers import (
    attempts_of,
    change,
    create_endpoint,
    deliveries,
    make_sender,
    run,
)
from tests.webhooks.receiver import Inbox, Receiver, receiver


def resolving_to(address: str, seen: list[str] | None = None) -> Resolve:
    def resolve(host: str, port: int) -> list[Any]:
        if seen is not None:
            seen.append(host)
        return [ipaddress.ip_address(address)]

    return resolve


def endpoint_state(client: TestClient, admin: Headers, endpoint: dict[str, Any]) -> Any:
    return client.get(f"/v1/webhooks/{endpoint['id']}", headers=admin).json()


class TestAddresses:
    def test_a_loopback_endpoint_is_refused_at_delivery_without_the_setting(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database_url: str,
        database: Database,
    ) -> None:
        create_endpoint(client, admin, hooks.url)  # allowed then (this module's settings)
        change(client, writer, "ada@example.com", "subscribed")
        strict = make_settings(database_url)
        other = Database(strict)
        try:
            report = run(make_sender(other, strict))
        finally:
            other.dispose()
        assert report.retried == 1
        assert hooks.inbox.received() == []
        (row,) = deliveries(database)
        assert "refused" in (row.last_error or "")
        assert "loopback" in (row.last_error or "")

    def test_a_name_that_resolves_inward_at_delivery_is_refused_dns_rebinding(
        self,
        database_url: str,
        admin: Headers,
        writer: Headers,
        hooks: Receiver,
    ) -> None:
        strict = make_settings(database_url)
        database = Database(strict)
        with TestClient(create_app(strict)) as client:
            client.app.state.webhook_resolve = resolving_to("93.184.215.14")  # type: ignore[attr-defined]
            client.put(
                "/v1/topics/newsletter",
                headers=admin,
                json={"name": "News", "kind": "marketing", "consent": "opt_in"},
            )
            create_endpoint(client, admin, f"http://rebind.example:{hooks.port}/hooks")
            change(client, writer, "ada@example.com", "subscribed")
        # Now the name points at the receiver on 127.0.0.1.
        sender = make_sender(database, strict, resolve=resolving_to("127.0.0.1"))
        report = run(sender)
        assert report.retried == 1
        assert hooks.inbox.received() == []
        (row,) = deliveries(database)
        assert "rebind.example resolves to 127.0.0.1, a loopback address" in (row.last_error or "")
        database.dispose()

    def test_the_connection_goes_to_the_address_that_was_checked(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        """The name exists only in the injected resolver: a second lookup by anyone else
        would fail. The Host header still names it."""
        client.app.state.webhook_resolve = resolving_to("127.0.0.1")  # type: ignore[attr-defined]
        endpoint = create_endpoint(client, admin, f"http://hooks.invalid:{hooks.port}/in")
        change(client, writer, "ada@example.com", "subscribed")
        seen: list[str] = []
        sender = make_sender(database, settings, resolve=resolving_to("127.0.0.1", seen))
        assert run(sender).sent == 1
        (delivery,) = hooks.inbox.received()
        assert delivery.headers["host"] == f"hooks.invalid:{hooks.port}"
        assert delivery.path == "/in"
        delivery.verified_by(endpoint["secret"])
        assert seen == ["hooks.invalid"]

    def test_a_redirect_is_not_followed(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        with receiver() as elsewhere:
            inbox = Inbox(answer=lambda _: (302, {"Location": elsewhere.url}))
            with receiver(inbox) as first:
                create_endpoint(client, admin, first.url)
                change(client, writer, "ada@example.com", "subscribed")
                report = run(make_sender(database, settings))
            assert report.retried == 1
            assert len(inbox.received()) == 1
            assert elsewhere.inbox.received() == []
        (row,) = deliveries(database)
        assert "redirects are not followed" in (row.last_error or "")


class TestEndpointsThatFail:
    def test_410_disables_the_endpoint_with_an_audit_event(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        inbox = Inbox(answer=lambda _: (410, {}))
        with receiver(inbox) as gone:
            endpoint = create_endpoint(client, admin, gone.url)
            change(client, writer, "ada@example.com", "subscribed")
            change(client, writer, "ada@example.com", "unsubscribed")  # waits behind the first
            report = run(make_sender(database, settings))
        assert len(inbox.received()) == 1
        assert report.failed == 1
        state = endpoint_state(client, admin, endpoint)
        assert state["enabled"] is False
        assert state["disabled_reason"] == "the receiver answered 410 Gone"
        assert [r.status for r in deliveries(database)] == ["failed", "failed"]
        change(client, writer, "ada@example.com", "subscribed")
        assert len(deliveries(database)) == 2  # nothing more for it
        events = client.get("/v1/audit", headers=admin).json()["events"]
        (disabled,) = [e for e in events if e["outcome"] == "disabled"]
        assert disabled["kind"] == "webhook_endpoint"
        assert disabled["actor"] == "prefcenter:outbox"
        assert disabled["reason"] == "the receiver answered 410 Gone"

    def test_five_days_of_failures_disable_the_endpoint(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        url = f"http://127.0.0.1:{free_port()}/down"
        endpoint = create_endpoint(client, admin, url)
        change(client, writer, "ada@example.com", "subscribed")
        clock = Clock()
        start = clock.now
        sender = make_sender(database, settings, clock=clock)
        run(sender)
        assert endpoint_state(client, admin, endpoint)["failing_since"] is not None
        clock.advance(timedelta(days=4, hours=23))
        change(client, writer, "bob@example.com", "subscribed")
        run(sender)
        assert endpoint_state(client, admin, endpoint)["enabled"] is True
        clock.advance(timedelta(hours=1))
        change(client, writer, "cyd@example.com", "subscribed")
        run(sender)
        state = endpoint_state(client, admin, endpoint)
        assert state["enabled"] is False
        assert state["disabled_reason"] == "every delivery failed for 5 days"
        assert {r.status for r in deliveries(database)} == {"failed"}
        events = client.get("/v1/audit", headers=admin).json()["events"]
        assert [e["outcome"] for e in events if e["kind"] == "webhook_endpoint"][-1] == "disabled"
        assert start < clock.now

    def test_a_success_ends_the_failing_spell(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        port = free_port()
        endpoint = create_endpoint(client, admin, f"http://127.0.0.1:{port}/hooks")
        change(client, writer, "ada@example.com", "subscribed")
        clock = Clock()
        sender = make_sender(database, settings, clock=clock)
        run(sender)
        assert endpoint_state(client, admin, endpoint)["failing_since"] is not None
        with receiver(port=port):
            clock.advance(timedelta(minutes=1))
            assert run(sender).sent == 1
        assert endpoint_state(client, admin, endpoint)["failing_since"] is None


class TestRotation:
    def test_for_a_day_both_secrets_verify_then_only_the_new_one(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url)
        old = endpoint["secret"]
        new = client.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret", headers=admin).json()[
            "secret"
        ]
        change(client, writer, "ada@example.com", "subscribed")
        clock = Clock()
        sender = make_sender(database, settings, clock=clock)
        run(sender)
        (during,) = hooks.inbox.received()
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        assert during.verified_by(old) == during.verified_by(new)

        clock.advance(timedelta(hours=24, minutes=1))
        change(client, writer, "ada@example.com", "unsubscribed")
        run(sender)
        after = hooks.inbox.received()[1]
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        after.verified_by(new)
        with pytest.raises(WebhookVerificationError):
            after.verified_by(old)

    def test_every_attempt_is_logged_with_its_outcome(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        answers = iter([(500, {}), (429, {"Retry-After": "1"})])
        inbox = Inbox(answer=lambda _: next(answers, (204, {})))
        with receiver(inbox) as hooks:
            endpoint = create_endpoint(client, admin, hooks.url)
            change(client, writer, "ada@example.com", "subscribed")
            clock = Clock()
            sender = make_sender(database, settings, clock=clock)
            for _ in range(3):
                run(sender)
                clock.advance(timedelta(hours=1))
        (row,) = deliveries(database)
        assert row.status == "sent"
        log = attempts_of(database, row.id or 0)
        assert [(a.number, a.outcome) for a in log] == [(1, "retry"), (2, "retry"), (3, "sent")]
        assert (log[0].error or "").startswith("HTTP 500")
        assert (log[1].error or "").startswith("HTTP 429")
        page = client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=admin).json()
        (shown,) = page["deliveries"]
        assert shown["status"] == "delivered"
        assert [a["outcome"] for a in shown["log"]] == ["retry", "retry", "sent"]
        assert len({d.webhook_id for d in inbox.received()}) == 1
