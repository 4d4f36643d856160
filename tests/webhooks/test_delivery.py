"""Deliveries to a real HTTP receiver, on both engines, each signature verified by the
reference `standardwebhooks` package: the body, the order per contact, retries on an
injected clock (down, 503 with Retry-After, then 200), 410, the five-day rule, the changes
that roll back, and rotation (both secrets verify for a day)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select
from standardwebhooks.webhooks import WebhookVerificationError

from prefcenter.app import create_app
from prefcenter.audit.models import AuditEvent
from prefcenter.consent import change_lane
from prefcenter.consent.ledger import orm as ledger_orm
from prefcenter.db import Database
from prefcenter.delivery import webhook_post
from prefcenter.delivery.webhooks import WebhookSender
from prefcenter.outbox.rules import WEBHOOK_RETRY_SCHEDULE
from prefcenter.settings import Settings
from prefcenter.webhooks.models import WebhookEndpoint
from prefcenter.webhooks.queue import queue_change_deliveries
from tests.support.factories import Headers
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

AUDIT_FIELDS = {
    "id",
    "seq",
    "kind",
    "contact_id",
    "topic",
    "from_status",
    "to_status",
    "outcome",
    "occurred_at",
    "recorded_at",
    "actor",
    "source",
    "campaign_id",
    "reason",
}


def sender_for(database: Database, settings: Settings, clock: Clock | None = None) -> WebhookSender:
    return make_sender(database, settings, clock=clock or Clock())


class TestSigned:
    def test_every_delivery_verifies_with_standardwebhooks_and_carries_the_audit_event(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        settings: Settings,
    ) -> None:
        endpoint = create_endpoint(client, admin, hooks.url, ["consent.changed"])
        assert endpoint["secret"].startswith("whsec_")
        change(client, writer, "ada@example.com", "subscribed")
        change(client, writer, "ada@example.com", "unsubscribed")
        change(client, writer, "bob@example.com", "subscribed")

        report = run(sender_for(database, settings))

        assert report.sent == 3
        received = hooks.inbox.received()
        assert len(received) == 3
        audit = client.get("/v1/audit", headers=admin).json()["events"]
        by_id = {e["id"]: e for e in audit}
        for delivery in received:
            body = delivery.verified_by(endpoint["secret"])
            assert set(body) == {"type", "timestamp", "data"}
            assert body["type"] == "consent.changed"
            data = body["data"]
            assert set(data) == AUDIT_FIELDS  # no evidence, no context
            event = by_id[data["id"]]
            assert {k: event[k] for k in AUDIT_FIELDS - {"occurred_at", "recorded_at"}} == {
                k: data[k] for k in AUDIT_FIELDS - {"occurred_at", "recorded_at"}
            }
            assert body["timestamp"] == data["recorded_at"]
            assert delivery.webhook_id == f"msg_{data['id']}.consent.changed"
            assert delivery.headers["content-type"] == "application/json"
        for contact in {d.json["data"]["contact_id"] for d in received}:
            seqs = [
                d.json["data"]["seq"] for d in received if d.json["data"]["contact_id"] == contact
            ]
            assert seqs == sorted(seqs)  # a contact's events in seq order
        assert {r.status for r in deliveries(database)} == {"sent"}

    def test_a_tampered_body_or_another_secret_does_not_verify(
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
        other = create_endpoint(client, admin, hooks.url + "/other")
        change(client, writer, "ada@example.com", "subscribed")
        run(sender_for(database, settings))

        mine = [d for d in hooks.inbox.received() if d.path == "/hooks"]
        assert len(mine) == 1
        delivery = mine[0]
        delivery.verified_by(endpoint["secret"])
        with pytest.raises(WebhookVerificationError):
            delivery.verified_by(other["secret"])
        tampered = type(delivery)(
            delivery.path,
            delivery.headers,
            delivery.body.replace(b"subscribed", b"unsubscribed"),
            delivery.at,
        )
        with pytest.raises(WebhookVerificationError):
            tampered.verified_by(endpoint["secret"])


class TestWhatIsQueued:
    def test_no_endpoint_no_row(
        self, client: TestClient, writer: Headers, topic: str, database: Database
    ) -> None:
        change(client, writer, "ada@example.com", "subscribed")
        change(client, writer, "ada@example.com", "unsubscribed", topic=None)
        assert deliveries(database) == []

    def test_only_endpoints_subscribed_to_the_type_get_a_row(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
    ) -> None:
        erased_only = create_endpoint(client, admin, hooks.url + "/erased", ["contact.erased"])
        suppressed = create_endpoint(client, admin, hooks.url + "/s", ["contact.suppressed"])
        every = create_endpoint(client, admin, hooks.url + "/all", ["*"])
        change(client, writer, "ada@example.com", "subscribed")
        change(client, writer, "ada@example.com", "unsubscribed", topic=None)

        rows = deliveries(database)
        with database.transaction(write=False) as session:
            ids = {e.public_id: e.id for e in session.exec(select(WebhookEndpoint))}
        per_endpoint = {
            public: [r.payload["type"] for r in rows if r.endpoint_id == ids[public]]
            for public in ids
        }
        assert per_endpoint[erased_only["id"]] == []
        assert per_endpoint[suppressed["id"]] == ["contact.suppressed"]
        assert per_endpoint[every["id"]] == [
            "consent.changed",
            "consent.changed",
            "contact.suppressed",
        ]

    def test_a_change_that_rolls_back_leaves_no_outbox_row(
        self,
        settings: Settings,
        admin: Headers,
        writer: Headers,
        topic: str,
        hooks: Receiver,
        database: Database,
        client: TestClient,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The request fails after the state, the event and the delivery were written.

        The locking path's (every engine's, and PostgreSQL's for what its lane hands on): the
        lane writes the state, the event and the deliveries in one statement, which PostgreSQL
        applies whole or not at all (tests/consent/test_change_lane.py)."""
        create_endpoint(client, admin, hooks.url)
        monkeypatch.setattr(change_lane, "record_on_cursor", lambda *_, **__: None)
        queue = queue_change_deliveries
        queued: list[int] = []

        def queue_then_fail(*args: Any, **kwargs: Any) -> None:
            queue(*args, **kwargs)
            queued.append(1)
            raise RuntimeError("the request fails after writing")

        monkeypatch.setattr(ledger_orm, "queue_change_deliveries", queue_then_fail)
        with TestClient(create_app(settings), raise_server_exceptions=False) as failing:
            response = failing.post(
                "/v1/consents",
                headers=writer,
                json={"email": "ada@example.com", "topic": topic, "status": "subscribed"},
            )
        assert response.status_code == 500
        assert queued == [1]
        assert deliveries(database) == []
        with database.transaction(write=False) as session:
            kinds = list(session.exec(select(AuditEvent.kind)))
        assert "consent_change" not in kinds


class TestRetries:
    def test_down_then_503_with_retry_after_then_200_delivers_in_order_with_every_attempt(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
    ) -> None:
        port = free_port()  # nothing listens yet
        url = f"http://127.0.0.1:{port}/hooks"
        endpoint = create_endpoint(client, admin, url)
        for status in ("subscribed", "unsubscribed", "subscribed"):
            change(client, writer, "ada@example.com", status)
        change(client, writer, "bob@example.com", "subscribed")
        clock = Clock()
        sender = sender_for(database, settings, clock)
        start = clock.now

        first = run(sender)
        # One per contact is claimed (the next of a contact waits for it): ada's first, bob's.
        assert first.claimed == 2
        assert first.retried == 2
        rows = deliveries(database)
        assert [r.attempts for r in rows] == [1, 0, 0, 1]
        assert rows[0].due_at == start + WEBHOOK_RETRY_SCHEDULE[0]
        assert "cannot connect" in (rows[0].last_error or "") or "not tried" in (
            rows[0].last_error or ""
        )

        clock.advance(WEBHOOK_RETRY_SCHEDULE[0] - timedelta(seconds=1))
        assert run(sender).claimed == 0  # not due yet, and ada's later ones wait for it

        answers = iter([(503, {"Retry-After": "600"})] * 2)
        inbox = Inbox(answer=lambda _: next(answers, (200, {})))
        with receiver(inbox, port=port):
            clock.advance(timedelta(seconds=1))
            second = run(sender)
            assert (second.claimed, second.retried) == (2, 2)
            rows = deliveries(database)
            # Retry-After (600 s) is later than the schedule's 5 minutes: it wins.
            assert rows[0].due_at == clock.now + timedelta(seconds=600)
            assert "HTTP 503" in (rows[0].last_error or "")

            clock.advance(timedelta(seconds=599))
            assert run(sender).claimed == 0
            clock.advance(timedelta(seconds=1))
            third = run(sender)
            assert third.sent >= 2
            assert run(sender).claimed == 0

        rows = deliveries(database)
        assert {r.status for r in rows} == {"sent"}
        accepted = inbox.accepted()
        assert len(accepted) == 4
        for delivery in accepted:
            delivery.verified_by(endpoint["secret"])
        ada = [d.json["data"] for d in accepted if d.json["data"]["to_status"] is not None]
        ada_contact = rows[0].ordering_key
        assert ada_contact is not None
        ada_seqs = [
            d.json["data"]["seq"]
            for d in accepted
            if d.json["data"]["contact_id"] == ada_contact.split(":", 1)[1]
        ]
        assert ada_seqs == sorted(ada_seqs)
        assert len(ada_seqs) == 3
        assert ada
        log = attempts_of(database, rows[0].id or 0)
        assert [a.outcome for a in log] == ["retry", "retry", "sent"]
        assert "HTTP 503" in (log[1].error or "")
        # The same webhook-id on every try.
        first_ids = [
            d.webhook_id for d in inbox.received() if d.webhook_id == accepted[0].webhook_id
        ]
        assert len(first_ids) >= 2


class TestSlowReceivers:
    def test_no_answer_within_the_timeout_is_retried_on_the_schedule(
        self,
        client: TestClient,
        admin: Headers,
        writer: Headers,
        topic: str,
        database: Database,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The timeout is the contract's 15 s (shortened here); the connection is dropped."""
        monkeypatch.setattr(webhook_post, "TIMEOUT_S", 0.3)
        released = threading.Event()

        def stall(_: Any) -> tuple[int, dict[str, str]]:
            released.wait(10)
            return 200, {}

        inbox = Inbox(answer=stall)
        with receiver(inbox) as slow:
            create_endpoint(client, admin, slow.url)
            change(client, writer, "ada@example.com", "subscribed")
            clock = Clock()
            report = run(sender_for(database, settings, clock), due=False)
            released.set()
        assert (report.claimed, report.retried, report.sent) == (1, 1, 0)
        (row,) = deliveries(database)
        assert row.status == "queued"
        assert row.due_at == clock.now + WEBHOOK_RETRY_SCHEDULE[0]
        assert "no answer within 0.3 s" in (row.last_error or "")
