"""A material version's notification run on both engines, to a real SMTP server: one mail per
contact who is not erased or bounced (marketing opt-outs included), none to the others, an
audit event per mail sent, and counts that match."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import select

from prefcenter.app import create_app
from prefcenter.audit.schemas import EventKind
from prefcenter.bounces.rules import BounceKind, SoftBouncePolicy
from prefcenter.bounces.schemas import BouncedContact, BounceReport
from prefcenter.bounces.service import record_bounces
from prefcenter.contacts.models import Contact
from prefcenter.db import Database, utcnow
from prefcenter.notices import service
from prefcenter.notices.schemas import NoticeVersionIn
from prefcenter.settings import Settings
from tests.notices.helpers import deliver, notification, publish, put_notice, version_body
from tests.support.factories import Headers, audit_events, make_topic, record_change
from tests.support.mail_server import SmtpServer, mail_settings, smtp_server


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def settings(database_url: str, server: SmtpServer) -> Settings:
    return mail_settings(database_url, server, organization_name="Example Shop")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def bounce(database: Database, address: str) -> None:
    with database.transaction(write=True) as session:
        contact = session.exec(select(Contact).where(Contact.address == address)).one()
        assert contact.id is not None
        record_bounces(
            session,
            [
                BounceReport(
                    contact=BouncedContact(contact.id, contact.public_id, address),
                    kind=BounceKind.HARD,
                    occurred_at=utcnow(),
                    actor="esp:ses",
                    source="ses",
                    evidence={"esp": "ses", "esp_event_id": f"b-{address}"},
                )
            ],
            policy=SoftBouncePolicy(limit=3, window=timedelta(days=7)),
            now=utcnow(),
        )


def erase(client: TestClient, headers: Headers, contact_id: str) -> None:
    answer = client.delete(f"/v1/contacts/{contact_id}", headers=headers)
    assert answer.status_code == 200, answer.text


def text_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content())


class TestRun:
    def test_everyone_who_may_be_told_gets_exactly_one_mail(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        settings: Settings,
        server: SmtpServer,
    ) -> None:
        make_topic(client, admin_headers, "newsletter")
        for address in ("ada@example.com", "carol@example.com", "dave@example.com"):
            record_change(client, writer_headers, address, "subscribed", topic="newsletter")
        # Unsubscribed from all marketing: a notice is not marketing, Bob is told all the same.
        record_change(client, writer_headers, "bob@example.com", "unsubscribed")
        record_change(client, writer_headers, "eve@example.com", "unsubscribed", topic="newsletter")
        frank = record_change(
            client, writer_headers, "frank@example.com", "subscribed", topic="newsletter"
        )
        carol = client.post(
            "/v1/contacts/lookup", headers=writer_headers, json={"emails": ["carol@example.com"]}
        ).json()["contacts"][0]["contact_id"]
        erase(client, admin_headers, carol)
        bounce(database, "dave@example.com")

        put_notice(client, admin_headers)
        publish(client, admin_headers, "v2", effective_in=timedelta(days=31))
        assert notification(client, admin_headers, "v2")["queued"] == 4
        # Erased after the run was queued: his mail is dropped when its turn comes.
        erase(client, admin_headers, str(frank["contact_id"]))

        deliver(database, settings)
        deliver(database, settings)  # nothing is left to send twice

        mails = server.inbox.mails()
        recipients = sorted(r for m in mails for r in m.rcpt_tos)
        assert recipients == ["ada@example.com", "bob@example.com", "eve@example.com"]
        for mail in mails:
            message = mail.message()
            assert message["Auto-Submitted"] == "auto-generated"
            assert str(message["Message-ID"]).startswith("<notice.")
            assert "Privacy policy" in str(message["Subject"])
            text = text_of(message, "plain")
            assert "We now name the company that sends our mail." in text
            assert "http://testserver/p/" in text
            assert "not marketing" in text
            assert "http://testserver/p/" in text_of(message, "html")

        assert notification(client, admin_headers, "v2") == {
            "queued": 0,
            "sent": 3,
            "failed": 0,
            "bounced": 0,
            "skipped": 1,
        }
        sent = [e for e in audit_events(database) if e.kind is EventKind.MAIL_SENT]
        assert sorted(e.evidence["message_id"] for e in sent) == sorted(m.message_id for m in mails)
        assert {e.evidence["notice"] for e in sent} == {"privacy@v2"}
        assert {e.evidence["template"] for e in sent} == {"notice"}

        bounce(database, "ada@example.com")
        assert notification(client, admin_headers, "v2")["bounced"] == 1

    def test_an_ownership_change_lists_the_choices_in_german(
        self,
        client: TestClient,
        admin_headers: Headers,
        writer_headers: Headers,
        database: Database,
        settings: Settings,
        server: SmtpServer,
    ) -> None:
        make_topic(client, admin_headers, "newsletter", name="Neuigkeiten")
        make_topic(client, admin_headers, "offers", name="Angebote")
        record_change(client, writer_headers, "ada@example.com", "subscribed", topic="newsletter")
        record_change(client, writer_headers, "ada@example.com", "unsubscribed", topic="offers")
        put_notice(client, admin_headers, "acquisition", kind="ownership_change")
        publish(client, admin_headers, "2027-01", key="acquisition", language="de")
        deliver(database, settings)
        (mail,) = server.inbox.mails()
        message = mail.message()
        assert message["Content-Language"] == "de"
        text = text_of(message, "plain")
        assert "Ihre aktuelle Auswahl:" in text
        assert "- Neuigkeiten: abonniert" in text
        assert "- Angebote: abbestellt" in text
        assert "http://testserver/p/" in text
        html = text_of(message, "html")
        assert "<li>Neuigkeiten: abonniert</li>" in html


def test_the_run_is_one_insert_whatever_the_number_of_contacts(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
) -> None:
    for n in range(25):
        record_change(client, writer_headers, f"p{n}@example.com", "unsubscribed")
    put_notice(client, admin_headers)
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(database.engine, "before_cursor_execute", seen)
    try:
        with database.transaction(write=True) as session:
            published = service.publish_version(
                session,
                "privacy",
                NoticeVersionIn.model_validate(version_body("v1")),
                actor=service.Actor(name="test", channel="test"),
                settings=settings,
                now=utcnow(),
            )
    finally:
        event.remove(database.engine, "before_cursor_execute", seen)
    assert published.queued == 25
    # The notice mails (the other insert is the webhook's, which reads no contact).
    mails = [s for s in statements if s.startswith("INSERT INTO outbox_message") and "contact" in s]
    assert len(mails) == 1
    assert "SELECT" in mails[0]
    assert not [s for s in statements if s.startswith("SELECT") and "FROM contact" in s]
