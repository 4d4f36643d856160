"""Turning back on what the person refused, with the service's own mail, on both engines: the
preference page changes nothing at the click; a mail to the address (a real SMTP server)
carries a 48-hour link; following it is the person's own act, with the mail's Message-ID as
proof. Whoever holds the preference link but not the mailbox gets nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database, utcnow
from prefcenter.outbox.models import OutboxMessage
from prefcenter.settings import Settings, parse_signing_keys
from prefcenter.tokens import TokenClaims, TokenPurpose, sign_token, verify_token
from tests.preference_center.test_router import ONE_CLICK
from tests.support.factories import (
    Headers,
    audit_events,
    issue_links,
    lookup,
    make_topic,
    record_change,
)
from tests.support.harness import TEST_SIGNING_KEYS, issue_key
from tests.support.mail_server import SmtpServer, deliver_mail, mail_settings, smtp_server

ADA = "ada@example.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
RING = parse_signing_keys(TEST_SIGNING_KEYS)


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def settings(database_url: str, server: SmtpServer) -> Settings:
    return mail_settings(database_url, server, organization_name="Example Shop")


@pytest.fixture
def links(client: TestClient, admin_headers: Headers, database: Database) -> dict[str, str]:
    """Ada, subscribed to the newsletter, who then one-clicked out of it herself."""
    make_topic(client, admin_headers, "newsletter", name="Newsletter")
    record_change(client, admin_headers, ADA, "subscribed", topic="newsletter", source="signup")
    mailer = issue_key(database, Scope.LINKS, name="mailer")
    issued: dict[str, str] = issue_links(client, mailer, ADA, topic="newsletter")
    assert client.post(issued["unsubscribe_url"], content=ONE_CLICK, headers=FORM).status_code == (
        200
    )
    return issued


def status_of(client: TestClient, headers: Headers) -> tuple[str | None, bool]:
    (ada,) = lookup(client, headers, ADA)
    statuses = {s["topic"]: s["status"] for s in ada["subscriptions"]}
    return statuses.get("newsletter"), ada["suppressed"]


def tick(client: TestClient, preferences_url: str, *topics: str) -> str:
    data = {"shown": ["newsletter"], "topic": list(topics), "action": "save"}
    response = client.post(preferences_url, data=data, headers=FORM)
    assert response.status_code == 200, response.text
    return response.text


def confirm_link(server: SmtpServer, count: int) -> tuple[str, str]:
    mail = server.inbox.wait_for(count)[-1]
    message = mail.message()
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"http://testserver(/c/[^\s]+)", str(body.get_content()))
    assert found is not None
    return found.group(1), str(message["Message-ID"])


def test_a_topic_refused_by_the_person_comes_back_only_through_the_mailbox(
    client: TestClient,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    admin_headers: Headers,
    links: dict[str, str],
) -> None:
    page = tick(client, links["preferences_url"], "newsletter")

    assert "Almost done: we will email you a link to confirm Newsletter." in page
    assert status_of(client, admin_headers) == ("unsubscribed", False)
    assert deliver_mail(database, settings) == 1
    path, message_id = confirm_link(server, 1)
    assert "Newsletter" in client.get(path).text
    assert status_of(client, admin_headers) == ("unsubscribed", False)  # GET changes nothing

    answer = client.post(path)

    assert answer.status_code == 200
    assert status_of(client, admin_headers) == ("subscribed", False)
    event = audit_events(database)[-1]
    assert (event.topic, event.to_status, event.actor, event.source) == (
        "newsletter",
        "subscribed",
        "recipient",
        "confirmation",
    )
    assert event.evidence["message_id"] == message_id
    # Used up: the opt-out it named is gone.
    assert client.post(path).status_code == 400


def test_unsubscribe_from_all_is_lifted_only_through_the_mailbox(
    client: TestClient,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    admin_headers: Headers,
    links: dict[str, str],
) -> None:
    client.post(links["preferences_url"], data={"action": "unsubscribe_all"}, headers=FORM)
    assert status_of(client, admin_headers)[1] is True

    page = tick(client, links["preferences_url"], "newsletter")

    assert "confirm that you want marketing emails again" in page
    assert status_of(client, admin_headers)[1] is True
    assert deliver_mail(database, settings) == 1
    path, _ = confirm_link(server, 1)
    assert client.post(path).status_code == 200
    assert status_of(client, admin_headers)[1] is False


def test_a_links_key_holder_cannot_confirm_and_the_mailbox_is_not_flooded(
    client: TestClient,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    admin_headers: Headers,
    links: dict[str, str],
) -> None:
    """The attack of the security review, with mail on: the page only makes the service mail
    the person; without their mailbox nothing changes, and asking again adds no mail."""
    for _ in range(5):
        tick(client, links["preferences_url"], "newsletter")

    with database.transaction(write=False) as session:
        queued = session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
    assert len(queued) == 1
    assert status_of(client, admin_headers) == ("unsubscribed", False)
    # A resubscribe link is signed by the service for its mail only: a preference or an
    # unsubscribe token on /c is refused.
    for url in (links["preferences_url"], links["unsubscribe_url"]):
        token = url.rsplit("/", 1)[1]
        assert client.post(f"/c/{token}").status_code == 400
    assert status_of(client, admin_headers) == ("unsubscribed", False)


def test_the_link_expires_after_48_hours_and_when_the_state_moves_on(
    client: TestClient,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    admin_headers: Headers,
    links: dict[str, str],
) -> None:
    tick(client, links["preferences_url"], "newsletter")
    deliver_mail(database, settings)
    path, _ = confirm_link(server, 1)
    token = path.removeprefix("/c/").split("?", 1)[0]
    claims = verify_token(RING, TokenPurpose.RESUBSCRIBE, token, now=utcnow()).claims
    old = sign_token(
        RING,
        TokenPurpose.RESUBSCRIBE,
        TokenClaims(
            contact_id=claims.contact_id,
            topic=claims.topic,
            campaign_id=None,
            issued_at=utcnow() - timedelta(hours=48, seconds=5),
            pending_event=claims.pending_event,
        ),
    )
    assert client.post(f"/c/{old}").status_code == 400

    # The support desk turns it back on, then the person opts out again: the link names an
    # opt-out that is no longer the current one.
    record_change(
        client,
        admin_headers,
        ADA,
        "subscribed",
        topic="newsletter",
        source="phone",
        reason="call: wants it back",
        evidence={"ticket": 7},
    )
    record_change(
        client,
        admin_headers,
        ADA,
        "unsubscribed",
        topic="newsletter",
        source="phone",
        reason="call: off again",
    )
    assert client.post(path).status_code == 400
    assert status_of(client, admin_headers) == ("unsubscribed", False)
