"""mailto: unsubscribes (RFC 2369): real messages built with the standard library's `email`
package, the token in the subject (as List-Unsubscribe puts it) or in the recipient's +tag;
auto-replies, delivery reports and empty return paths ignored; the API, the SES path and the
`prefcenter inbound-mail` pipe."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter.apikeys.schemas import Scope
from prefcenter.cli import cli
from prefcenter.db import Database
from prefcenter.inbound.mailto import NotAPersonsMail, UnsubscribeMail, read_mail
from prefcenter.settings import Settings
from tests.inbound.esp import SnsSigner
from tests.inbound.helpers import eligibility, subscribe, written
from tests.support.factories import (
    Headers,
    assert_problem,
    audit_events,
    issue_links,
    lookup,
    make_topic,
    subscription_status,
    token_of,
)
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS, issue_key

MAILBOX = "unsubscribe@mail.example.com"


def mailto_subject(links: dict[str, Any]) -> str:
    """The subject of the List-Unsubscribe mailto: as a mail client fills it in (decoded)."""
    header = links["headers"]["List-Unsubscribe"]
    mailto = header.split("<mailto:", 1)[1].rstrip(">")
    query = urlsplit("mailto:" + mailto).query
    return unquote(parse_qs(query)["subject"][0])


def message(
    *,
    subject: str = "unsubscribe",
    to: str = MAILBOX,
    sender: str = "ada@example.com",
    **headers: str,
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="example.com")
    mail["Return-Path"] = f"<{sender}>"
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content("Please unsubscribe me.\n")
    return mail


@pytest.fixture
def inbound_headers(database: Database) -> Headers:
    return issue_key(database, Scope.INBOUND, name="mta")


@pytest.fixture
def links(client: TestClient, admin_headers: Headers) -> dict[str, Any]:
    make_topic(client, admin_headers, "newsletter")
    make_topic(client, admin_headers, "offers")
    subscribe(client, admin_headers, "ada@example.com", "newsletter")
    subscribe(client, admin_headers, "ada@example.com", "offers")
    return issue_links(client, admin_headers, "ada@example.com")


def post_mail(client: TestClient, headers: Headers, mail: EmailMessage | bytes) -> Any:
    raw = mail if isinstance(mail, bytes) else mail.as_bytes()
    return client.post(
        "/v1/inbound/email", content=raw, headers={**headers, "Content-Type": "message/rfc822"}
    )


class TestReading:
    def test_the_subject_as_list_unsubscribe_puts_it(self, links: dict[str, Any]) -> None:
        mail = read_mail(message(subject=mailto_subject(links)).as_bytes())
        assert isinstance(mail, UnsubscribeMail)
        assert mail.tokens == (token_of(links["unsubscribe_url"]),)
        assert mail.sender == "ada@example.com"
        assert mail.message_id is not None

    def test_a_reply_still_carries_the_token(self, links: dict[str, Any]) -> None:
        mail = read_mail(message(subject="Re: " + mailto_subject(links)).as_bytes())
        assert isinstance(mail, UnsubscribeMail)
        assert mail.tokens == (token_of(links["unsubscribe_url"]),)

    def test_the_plus_tag_of_the_recipient(self, links: dict[str, Any]) -> None:
        token = token_of(links["unsubscribe_url"])
        mail = read_mail(message(to=f"unsubscribe+{token}@mail.example.com").as_bytes())
        assert isinstance(mail, UnsubscribeMail)
        assert mail.tokens == (token,)

    @pytest.mark.parametrize(
        ("headers", "why"),
        [
            ({"Auto_Submitted": "auto-replied"}, NotAPersonsMail.AUTO_REPLY),
            ({"Auto_Submitted": "auto-generated"}, NotAPersonsMail.AUTO_REPLY),
            ({"Precedence": "bulk"}, NotAPersonsMail.AUTO_REPLY),
            ({"X_Autoreply": "yes"}, NotAPersonsMail.AUTO_REPLY),
        ],
    )
    def test_auto_replies_are_ignored(
        self, links: dict[str, Any], headers: dict[str, str], why: NotAPersonsMail
    ) -> None:
        assert read_mail(message(subject=mailto_subject(links), **headers).as_bytes()) is why

    def test_an_auto_submitted_no_is_a_persons_mail(self, links: dict[str, Any]) -> None:
        mail = message(subject=mailto_subject(links), Auto_Submitted="no")
        assert isinstance(read_mail(mail.as_bytes()), UnsubscribeMail)

    def test_a_delivery_report_is_ignored(self, links: dict[str, Any]) -> None:
        report = message(subject="Delivery Status Notification (Failure)")
        report.replace_header("Subject", mailto_subject(links))
        report.make_mixed()
        report.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
        assert read_mail(report.as_bytes()) is NotAPersonsMail.DELIVERY_REPORT
        daemon = message(subject=mailto_subject(links), sender="MAILER-DAEMON@example.com")
        assert read_mail(daemon.as_bytes()) is NotAPersonsMail.DELIVERY_REPORT

    def test_an_empty_return_path_is_ignored(self, links: dict[str, Any]) -> None:
        mail = message(subject=mailto_subject(links))
        mail.replace_header("Return-Path", "<>")
        assert read_mail(mail.as_bytes()) is NotAPersonsMail.EMPTY_RETURN_PATH

    def test_no_token_is_no_unsubscribe(self) -> None:
        assert read_mail(message(subject="unsubscribe me please").as_bytes()) is (
            NotAPersonsMail.NO_TOKEN
        )


class TestApi:
    def test_the_subject_token_unsubscribes_like_a_one_click(
        self,
        client: TestClient,
        admin_headers: Headers,
        inbound_headers: Headers,
        database: Database,
        links: dict[str, Any],
    ) -> None:
        mail = message(subject=mailto_subject(links))
        response = post_mail(client, inbound_headers, mail)
        assert response.status_code == 200, response.text
        assert response.json() == {"outcome": "unsubscribed", "reason": None}
        # The links' token names no topic: all marketing, as the one-click does.
        assert eligibility(client, admin_headers, "newsletter", "ada@example.com") == ["suppressed"]
        event = audit_events(database)[-1]
        assert (event.source, event.actor) == ("mailto", "recipient")
        assert event.evidence["message_id"] == mail["Message-ID"]
        assert event.evidence["channel"] == "mailto"
        assert event.evidence["from_contact_address"] is True
        # The person's own opt-out: an API client cannot undo it.
        crm = issue_key(database, Scope.CONSENT_WRITE, name="crm")
        response = client.post(
            "/v1/consents",
            headers=crm,
            json={"email": "ada@example.com", "status": "subscribed", "source": "api"},
        )
        assert response.status_code == 409

    def test_a_topic_token_in_the_plus_tag_unsubscribes_from_that_topic(
        self,
        client: TestClient,
        admin_headers: Headers,
        inbound_headers: Headers,
        links: dict[str, Any],
    ) -> None:
        topic_links = issue_links(client, admin_headers, "ada@example.com", topic="offers")
        token = token_of(topic_links["unsubscribe_url"])
        mail = message(to=f"unsubscribe+{token}@mail.example.com", sender="someone@example.org")
        assert post_mail(client, inbound_headers, mail).json()["outcome"] == "unsubscribed"
        (ada,) = lookup(client, admin_headers, "ada@example.com")
        assert subscription_status(ada, "offers") == "unsubscribed"
        assert subscription_status(ada, "newsletter") == "subscribed"

    def test_an_auto_reply_changes_nothing(
        self,
        client: TestClient,
        inbound_headers: Headers,
        database: Database,
        links: dict[str, Any],
    ) -> None:
        before = written(database)
        mail = message(subject="Re: " + mailto_subject(links), Auto_Submitted="auto-replied")
        answer = post_mail(client, inbound_headers, mail).json()
        assert answer == {"outcome": "ignored", "reason": "auto_reply"}
        assert written(database) == before

    def test_a_forged_or_preference_token_changes_nothing(
        self,
        client: TestClient,
        inbound_headers: Headers,
        database: Database,
        links: dict[str, Any],
    ) -> None:
        token = token_of(links["unsubscribe_url"])
        before = written(database)
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        manage = token_of(links["preferences_url"])  # a MANAGE token cannot unsubscribe here
        for candidate in (forged, manage):
            answer = post_mail(client, inbound_headers, message(subject=f"unsubscribe {candidate}"))
            assert answer.json() == {"outcome": "ignored", "reason": "invalid_token"}
        assert written(database) == before

    def test_the_same_message_twice_changes_nothing_the_second_time(
        self,
        client: TestClient,
        inbound_headers: Headers,
        database: Database,
        links: dict[str, Any],
    ) -> None:
        mail = message(subject=mailto_subject(links))
        assert post_mail(client, inbound_headers, mail).json()["outcome"] == "unsubscribed"
        before = written(database)
        assert post_mail(client, inbound_headers, mail).json()["reason"] == "duplicate"
        assert written(database) == before

    def test_it_needs_the_inbound_scope(
        self, client: TestClient, database: Database, links: dict[str, Any]
    ) -> None:
        mail = message(subject=mailto_subject(links))
        assert_problem(post_mail(client, {}, mail), 401)
        reader = issue_key(database, Scope.CONSENT_READ, name="reader")
        assert_problem(post_mail(client, reader, mail), 403)

    def test_a_forwarders_form_with_basic_credentials(
        self,
        client: TestClient,
        admin_headers: Headers,
        inbound_headers: Headers,
        links: dict[str, Any],
    ) -> None:
        # SendGrid Inbound Parse ("POST the raw, full MIME message"): field `email`, and the
        # key as the password of credentials in the URL.
        secret = inbound_headers["Authorization"].removeprefix("Bearer ")
        response = client.post(
            "/v1/inbound/email",
            data={"email": message(subject=mailto_subject(links)).as_string(), "to": MAILBOX},
            auth=("inbound", secret),
        )
        assert response.status_code == 200, response.text
        assert response.json()["outcome"] == "unsubscribed"

    def test_postmarks_raw_email_json(
        self, client: TestClient, inbound_headers: Headers, links: dict[str, Any]
    ) -> None:
        raw = message(subject=mailto_subject(links)).as_string()
        response = client.post(
            "/v1/inbound/email",
            content=json.dumps({"From": "ada@example.com", "RawEmail": raw}).encode(),
            headers={**inbound_headers, "Content-Type": "application/json"},
        )
        assert response.json()["outcome"] == "unsubscribed"

    def test_garbage_is_ignored_not_an_error(
        self, client: TestClient, inbound_headers: Headers, database: Database
    ) -> None:
        before = written(database)
        for raw in (b"", b"\x00\xff" * 100, b"Subject: unsubscribe 2.x.y.z\r\n\r\n"):
            response = post_mail(client, inbound_headers, raw)
            assert response.status_code == 200
            assert response.json()["outcome"] == "ignored"
        assert written(database) == before


def test_ses_receiving_through_sns_unsubscribes(
    client: TestClient, admin_headers: Headers, sns: SnsSigner, links: dict[str, Any]
) -> None:
    raw = message(subject=mailto_subject(links)).as_bytes()
    content = {
        "notificationType": "Received",
        "receipt": {"action": {"type": "SNS", "encoding": "BASE64"}},
        "content": base64.b64encode(raw).decode(),
    }
    response = client.post(
        "/v1/inbound/ses",
        content=json.dumps(sns.notification(content)).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 1
    assert eligibility(client, admin_headers, "newsletter", "ada@example.com") == ["suppressed"]


class TestPipe:
    def test_prefcenter_inbound_mail_reads_stdin(
        self,
        monkeypatch: pytest.MonkeyPatch,
        settings: Settings,
        client: TestClient,
        admin_headers: Headers,
        links: dict[str, Any],
    ) -> None:
        monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
        raw = message(subject=mailto_subject(links)).as_bytes()
        result = CliRunner().invoke(cli, ["inbound-mail"], input=raw)
        assert result.exit_code == 0, result.output
        assert "unsubscribed" in result.stderr
        assert eligibility(client, admin_headers, "newsletter", "ada@example.com") == ["suppressed"]
        ignored = CliRunner().invoke(cli, ["inbound-mail"], input=b"Subject: hello\r\n\r\nhi")
        assert ignored.exit_code == 0
        assert "ignored (no_token)" in ignored.stderr

    def test_an_unreachable_database_is_a_temporary_failure(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(
            "PREFCENTER_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none"
        )
        monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
        result = CliRunner().invoke(cli, ["inbound-mail"], input=b"Subject: x\r\n\r\nx")
        assert result.exit_code == 75, result.output
