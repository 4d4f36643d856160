"""The double-opt-in confirmation as the service's own mail, in process, on both engines: queued
with the pending change (or not at all when it rolls back), sent by the worker to a real SMTP
server, confirmed through its link, and proven in the trail by its Message-ID."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter import confirmations
from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.confirmations import RESEND_AFTER, queue_confirmation
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import Database
from prefcenter.outbox.models import OutboxMessage
from prefcenter.settings import Settings
from tests.support.factories import Headers, audit_events, lookup, make_topic, subscription_status
from tests.support.harness import issue_key
from tests.support.mail_server import SmtpServer, deliver_mail, mail_settings, smtp_server

ADA = "ada@example.com"
EVENTS = "events"


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def settings(database_url: str, server: SmtpServer) -> Settings:
    return mail_settings(database_url, server, organization_name="Example Shop")


@pytest.fixture
def writer(database: Database) -> Headers:
    return issue_key(database, Scope.CONSENT_WRITE, Scope.CONSENT_READ, name="signup-form")


@pytest.fixture
def topic(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, EVENTS, name="Events near you", double_opt_in=True)
    return EVENTS


def outbox_rows(database: Database) -> list[OutboxMessage]:
    with database.transaction(write=False) as session:
        return list(session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))


def subscribe(client: TestClient, headers: Headers, **fields: Any) -> dict[str, Any]:
    body = {"email": ADA, "topic": EVENTS, "status": "subscribed", "source": "signup_form"}
    response = client.post("/v1/consents", headers=headers, json={**body, **fields})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def link_in(text: str, prefix: str) -> str:
    found = re.search(rf"http://testserver{prefix}[^\s\"<]+", text)
    assert found is not None, text
    return found.group(0)


class TestQueuedWithTheChange:
    def test_the_answer_is_pending_without_a_link_and_the_mail_is_queued(
        self, client: TestClient, writer: Headers, database: Database, topic: str
    ) -> None:
        answer = subscribe(client, writer)

        assert answer["status"] == "pending"
        assert answer.get("confirm_url") is None
        (row,) = outbox_rows(database)
        assert row.kind == "mail"
        assert row.status == "queued"
        assert row.cause_event_id == answer["event_id"]
        assert row.payload["template"] == "double_opt_in"
        assert ADA not in str(row.payload)  # the address is read when it is sent
        (pending,) = [e for e in audit_events(database) if e.id == answer["event_id"]]
        assert pending.context["confirm_link_to"] == "mail"

    def test_asking_again_soon_queues_nothing_more_later_it_does(
        self, client: TestClient, writer: Headers, database: Database, topic: str
    ) -> None:
        first = subscribe(client, writer)
        again = subscribe(client, writer)
        assert again["status"] == "pending"
        assert again.get("confirm_url") is None
        assert len(outbox_rows(database)) == 1
        with database.transaction(write=True) as session:
            row = session.exec(select(OutboxMessage)).one()
            row.created_at -= RESEND_AFTER + timedelta(seconds=1)
            session.add(row)
        subscribe(client, writer)
        rows = outbox_rows(database)
        assert len(rows) == 2
        assert {r.cause_event_id for r in rows} == {first["event_id"]}
        assert rows[0].message_id != rows[1].message_id

    def test_a_change_that_rolls_back_leaves_no_mail(
        self,
        settings: Settings,
        writer: Headers,
        database: Database,
        topic: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The request fails after the subscription and the mail were written: both go."""
        queue = queue_confirmation

        def queue_then_fail(*args: Any, **kwargs: Any) -> str | None:
            queue(*args, **kwargs)
            raise RuntimeError("the request fails after writing")

        monkeypatch.setattr(confirmations, "queue_confirmation", queue_then_fail)
        with TestClient(create_app(settings), raise_server_exceptions=False) as failing:
            response = failing.post(
                "/v1/consents",
                headers=writer,
                json={"email": ADA, "topic": EVENTS, "status": "subscribed"},
            )
        assert response.status_code == 500
        assert outbox_rows(database) == []
        with TestClient(create_app(settings)) as client:
            (contact,) = lookup(client, writer, ADA)
        assert contact["contact_id"] is None

    def test_an_unsubscribe_mails_nothing(
        self, client: TestClient, writer: Headers, database: Database, topic: str
    ) -> None:
        client.post(
            "/v1/consents",
            headers=writer,
            json={"email": ADA, "topic": EVENTS, "status": "unsubscribed"},
        )
        assert outbox_rows(database) == []


class TestSentAndConfirmed:
    def test_the_mail_reaches_smtp_and_its_link_confirms_with_the_message_id_as_proof(
        self,
        client: TestClient,
        writer: Headers,
        database: Database,
        settings: Settings,
        server: SmtpServer,
        topic: str,
    ) -> None:
        answer = subscribe(client, writer, language="de", campaign_id="spring")
        assert deliver_mail(database, settings) == 1

        (mail,) = server.inbox.wait_for(1)
        message = mail.message()
        (row,) = outbox_rows(database)
        assert row.status == "sent"
        assert message["Message-ID"] == row.message_id
        assert mail.rcpt_tos == (ADA,)
        assert mail.mail_from == "news@example.com"
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["Content-Language"] == "de"
        assert "Events near you" in message["Subject"]
        text = message.get_body(preferencelist=("plain",))
        assert text is not None
        confirm = link_in(str(text.get_content()), "/c/")
        preferences = link_in(str(text.get_content()), "/p/")
        assert confirm.endswith("?lang=de")

        page = client.get(urlsplit(preferences).path, params={"lang": "de"})
        assert page.status_code == 200
        path = urlsplit(confirm).path
        assert client.get(path).status_code == 200
        assert subscription_status(lookup(client, writer, ADA)[0], EVENTS) == "pending"
        assert client.post(path).status_code == 200
        assert subscription_status(lookup(client, writer, ADA)[0], EVENTS) == "subscribed"

        events = audit_events(database)
        (sent,) = [e for e in events if e.kind == "mail_sent"]
        assert sent.evidence["message_id"] == row.message_id
        assert sent.evidence["template"] == "double_opt_in"
        assert sent.context["cause_event"] == answer["event_id"]
        assert sent.contact_id == answer["contact_id"]
        assert sent.campaign_id == "spring"
        (confirmed,) = [
            e for e in events if e.kind == "consent_change" and e.source == "confirmation"
        ]
        assert confirmed.to_status == "subscribed"
        assert confirmed.evidence["message_id"] == row.message_id
        keys = AuditKeys.from_settings(settings)
        result = verify_ledger(database, keys, deep=True)
        assert result.ok, result

    def test_the_address_is_in_the_chain_only_as_its_keyed_hash(
        self,
        client: TestClient,
        writer: Headers,
        database: Database,
        settings: Settings,
        topic: str,
    ) -> None:
        subscribe(client, writer)
        deliver_mail(database, settings)
        with database.transaction(write=False) as session:
            event = session.exec(select(AuditEvent).where(AuditEvent.kind == "mail_sent")).one()
        assert ADA.encode() not in event.canonical
        assert event.address_hash == AuditKeys.from_settings(settings).address_hash(ADA)

    def test_an_erased_contact_gets_no_mail(
        self,
        client: TestClient,
        writer: Headers,
        admin_headers: Headers,
        database: Database,
        settings: Settings,
        server: SmtpServer,
        topic: str,
    ) -> None:
        answer = subscribe(client, writer)
        erased = client.delete(f"/v1/contacts/{answer['contact_id']}", headers=admin_headers)
        assert erased.status_code == 200
        assert deliver_mail(database, settings) == 0
        (row,) = outbox_rows(database)
        assert row.status == "cancelled"
        assert server.inbox.mails() == []

    def test_a_subscription_no_longer_pending_gets_no_mail(
        self,
        client: TestClient,
        writer: Headers,
        database: Database,
        settings: Settings,
        server: SmtpServer,
        topic: str,
    ) -> None:
        subscribe(client, writer)
        client.post(
            "/v1/consents",
            headers=writer,
            json={"email": ADA, "topic": EVENTS, "status": "unsubscribed"},
        )
        assert deliver_mail(database, settings) == 0
        (row,) = outbox_rows(database)
        assert row.status == "cancelled"
        assert row.last_error == "the subscription is no longer pending"
        assert server.inbox.mails() == []
