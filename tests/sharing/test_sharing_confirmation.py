"""A confirmation for a sharing topic asks about sharing with its third party, by name, in the
mail and on the page, in English and German; a marketing topic's keeps its own texts."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient

from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.notices.helpers import deliver
from tests.preference_center.test_router import visit
from tests.support.factories import Headers, make_topic, record_change
from tests.support.mail_server import SmtpServer, mail_settings, smtp_server

ACME = "Acme Analytics Ltd"


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


def text_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content())


def confirmation(
    client: TestClient,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    topic: str,
    language: str,
) -> EmailMessage:
    answer = record_change(
        client, writer_headers, "ada@example.com", "subscribed", topic=topic, language=language
    )
    assert answer["status"] == "pending"
    deliver(database, settings)
    (mail,) = server.inbox.mails()
    return mail.message()


def confirm_path(message: EmailMessage) -> str:
    text = text_of(message, "plain")
    url = next(word for word in text.split() if "/c/" in word)
    return url.split("testserver", 1)[-1]


@pytest.mark.parametrize(
    ("language", "subject", "asks", "button", "done"),
    [
        (
            "en",
            f"Please confirm: may we share your data with {ACME}?",
            f"Example Shop may share your personal data with {ACME}",
            "Yes, share my data",
            f"with {ACME}. You can withdraw this at any time",
        ),
        (
            "de",
            f"Bitte bestätigen Sie: Dürfen wir Ihre Daten an {ACME} weitergeben?",
            f"dass Example Shop Ihre personenbezogenen Daten an {ACME} weitergeben darf",
            "Ja, meine Daten weitergeben",
            f"an {ACME} weitergeben. Sie können das jederzeit",
        ),
    ],
)
def test_a_sharing_confirmation_names_the_third_party(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    language: str,
    subject: str,
    asks: str,
    button: str,
    done: str,
) -> None:
    make_topic(
        client,
        admin_headers,
        "acme",
        name="Partner offers",
        kind="sharing",
        consent="opt_in",
        third_party=ACME,
        double_opt_in=True,
    )
    message = confirmation(client, writer_headers, database, settings, server, "acme", language)
    assert str(message["Subject"]) == subject
    text = " ".join(text_of(message, "plain").split())
    assert asks in text
    assert "Partner offers" in text
    html = text_of(message, "html")
    assert button in html
    path = confirm_path(message)
    page = visit(client, "GET", path)
    assert page.status_code == 200
    assert ACME in page.text
    assert button in page.text
    confirmed = visit(client, "POST", path)
    assert confirmed.status_code == 200
    assert done in " ".join(confirmed.text.split())


def test_a_marketing_confirmation_keeps_its_texts(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
) -> None:
    make_topic(client, admin_headers, "news", name="News", double_opt_in=True)
    message = confirmation(client, writer_headers, database, settings, server, "news", "en")
    assert str(message["Subject"]) == "Please confirm your subscription: News"
    assert "share" not in text_of(message, "plain")
    page = visit(client, "GET", confirm_path(message))
    assert "Yes, subscribe me" in page.text
    assert "share" not in page.text
