"""The notice mail of a material version of a notice topics are bound to names the person's
subscriptions it asks to be given again, with the preference link that gives them again (both
engines, a real SMTP server)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.notices.helpers import POLICY, deliver, publish, put_notice
from tests.notices.reconsent_helpers import PAST
from tests.notices.test_run import text_of
from tests.support.factories import Headers, make_topic, record_change
from tests.support.mail_server import SmtpServer, mail_settings, smtp_server

PARAGRAPH = "This change concerns what you subscribed to"


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


def test_the_mail_names_the_subscriptions_to_give_again_and_links_the_preferences(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
) -> None:
    put_notice(client, admin_headers)
    publish(client, admin_headers, "v1", effective_at=PAST, reason="First.", material=False)
    make_topic(client, admin_headers, "newsletter", name="Weekly letter", notice=POLICY)
    make_topic(client, admin_headers, "offers", name="Offers")
    for topic in ("newsletter", "offers"):
        record_change(client, writer_headers, "ada@example.com", "subscribed", topic=topic)
    record_change(client, writer_headers, "bob@example.com", "subscribed", topic="offers")
    record_change(client, writer_headers, "bob@example.com", "subscribed", topic="newsletter")
    record_change(client, writer_headers, "bob@example.com", "unsubscribed", topic="newsletter")
    publish(client, admin_headers, "v2", effective_in=timedelta(days=31))
    deliver(database, settings)

    mails = {m.rcpt_tos[0]: m.message() for m in server.inbox.mails()}
    assert sorted(mails) == ["ada@example.com", "bob@example.com"]
    ada = text_of(mails["ada@example.com"], "plain")
    (line,) = [line for line in ada.splitlines() if PARAGRAPH in line]
    assert "Weekly letter" in line
    assert "Offers" not in line
    assert "http://testserver/p/" in line
    assert "Weekly letter" in text_of(mails["ada@example.com"], "html")
    # Opted out of the bound topic: nothing to give again (opt-outs stay opt-outs).
    assert PARAGRAPH not in text_of(mails["bob@example.com"], "plain")


def test_a_non_material_version_asks_nothing_in_its_mail(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
) -> None:
    """A non-material version starts no run; so no mail can ask anything."""
    put_notice(client, admin_headers)
    publish(client, admin_headers, "v1", effective_at=PAST, reason="First.", material=False)
    make_topic(client, admin_headers, "newsletter", notice=POLICY)
    record_change(client, writer_headers, "ada@example.com", "subscribed", topic="newsletter")
    publish(client, admin_headers, "v2", effective_in=timedelta(days=31), material=False)
    deliver(database, settings)
    assert server.inbox.mails() == []
