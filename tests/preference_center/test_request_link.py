"""`GET`/`POST /p`, "email me a link to my preferences", on both engines: the mail goes to a
real SMTP server only for a known, not erased contact; the page is the same whatever the
address; the throttle holds per address and per network."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.outbox.models import OutboxMessage
from prefcenter.preference_center.mail_requests import PER_ADDRESS
from prefcenter.settings import Settings
from tests.preference_center.test_router import parse_page
from tests.support.factories import Headers, make_topic, record_change
from tests.support.harness import make_settings
from tests.support.mail_server import SmtpServer, deliver_mail, mail_settings, smtp_server

ADA = "ada@example.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def settings(database_url: str, server: SmtpServer) -> Settings:
    return mail_settings(database_url, server, organization_name="Example Shop")


@pytest.fixture
def ada(client: TestClient, admin_headers: Headers) -> str:
    make_topic(client, admin_headers, "newsletter", name="Newsletter")
    answer = record_change(client, admin_headers, ADA, "subscribed", topic="newsletter")
    return str(answer["contact_id"])


def queued(database: Database) -> list[OutboxMessage]:
    with database.transaction(write=False) as session:
        return list(session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))


def ask(client: TestClient, email: str, ip: str = "198.51.100.7") -> tuple[int, str]:
    response = client.post(
        "/p", content=f"email={email}".encode(), headers={**FORM, "X-Forwarded-For": ip}
    )
    return response.status_code, parse_page(response).text


@pytest.mark.usefixtures("ada")
def test_a_known_address_gets_its_preference_link_by_mail(
    client: TestClient, database: Database, settings: Settings, server: SmtpServer
) -> None:
    form = parse_page(client.get("/p"))
    assert form.forms
    status, text = ask(client, "Ada@Example.com")

    assert status == 200
    assert "a link to its preferences is on its way" in text
    assert deliver_mail(database, settings) == 1
    (mail,) = server.inbox.wait_for(1)
    message = mail.message()
    assert mail.rcpt_tos == (ADA,)
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    (link,) = [w for w in str(body.get_content()).split() if "/p/" in w]
    page = client.get(urlsplit(link).path)
    assert page.status_code == 200
    assert "Newsletter" in page.text


def test_the_page_is_the_same_for_known_unknown_and_erased_addresses(
    client: TestClient, database: Database, admin_headers: Headers, ada: str
) -> None:
    zoe = record_change(client, admin_headers, "zoe@example.com", "unsubscribed")
    erased = client.delete(f"/v1/contacts/{zoe['contact_id']}", headers=admin_headers)
    assert erased.status_code == 200

    answers = {
        email: ask(client, email, ip=f"198.51.100.{index}")
        for index, email in enumerate((ADA, "nobody@example.com", "zoe@example.com"))
    }

    assert len(set(answers.values())) == 1
    assert [row.payload["contact_id"] for row in queued(database)] == [ada]


@pytest.mark.usefixtures("ada")
def test_one_address_is_mailed_a_few_times_an_hour_then_429(
    client: TestClient, database: Database
) -> None:
    for index in range(PER_ADDRESS):
        assert ask(client, ADA, ip=f"203.0.113.{index}")[0] == 200

    response = client.post(
        "/p", content=f"email={ADA}".encode(), headers={**FORM, "X-Forwarded-For": "192.0.2.9"}
    )

    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many links" in response.text
    assert len(queued(database)) == PER_ADDRESS


def test_not_an_address_is_a_400_page_and_sends_nothing(
    client: TestClient, database: Database
) -> None:
    status, text = ask(client, "not-an-address")

    assert status == 400
    assert "does not look like an email address" in text
    assert queued(database) == []


def test_without_mail_the_page_says_where_the_link_is_and_post_is_404(
    database_url: str, database: Database
) -> None:
    with TestClient(create_app(make_settings(database_url))) as client:
        page = client.get("/p")
        assert page.status_code == 200
        assert "preferences link at the foot" in page.text
        assert "<form" not in page.text
        assert client.post("/p", content=b"email=ada@example.com", headers=FORM).status_code == 404
    assert queued(database) == []


@pytest.mark.usefixtures("ada")
@pytest.mark.parametrize(
    "smuggled",
    [
        "ada%40example.com%0D%0ABcc%3A%20eve%40example.org",
        "ada%40example.com%0ABcc%3A%20eve%40example.org",
        "ada%40example.com%0D%0A%0D%0Aeve%40example.org",
        "ada%40example.com%2C%20eve%40example.org",
        "ada%40example.com%00eve%40example.org",
    ],
)
def test_a_header_or_second_recipient_smuggled_into_the_address_sends_nothing(
    client: TestClient, database: Database, smuggled: str
) -> None:
    """Header injection: a known address followed by CR/LF and a `Bcc:` (or a second address
    after a comma, or a NUL) is not an address; nothing is queued, so no mail goes anywhere."""
    response = client.post(
        "/p", content=f"email={smuggled}".encode(), headers={**FORM, "X-Forwarded-For": "192.0.2.1"}
    )

    assert response.status_code == 400
    assert "does not look like an email address" in parse_page(response).text
    assert queued(database) == []
