"""The default Maildir and the console's "Outgoing mail" page: on SQLite with nothing set, a
double-opt-in subscription lands a mail in the Maildir beside the database and the console
lists it; on PostgreSQL nothing set means no mail at all."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.mail.config import default_maildir, mail_config
from prefcenter.settings import Settings
from tests.admin.console import sign_in_with_key
from tests.support.factories import Headers, make_topic, record_change
from tests.support.harness import make_settings
from tests.support.mail_server import deliver_mail

ADA = "ada@example.com"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, mail_url=None)  # nothing set: the defaults


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def subscribe(client: TestClient, headers: Headers) -> dict[str, object]:
    make_topic(client, headers, "events", name="Events near you", double_opt_in=True)
    return record_change(client, headers, ADA, "subscribed", topic="events")


def test_the_default_on_sqlite_is_a_maildir_on_postgresql_no_mail(
    client: TestClient, admin_headers: Headers, database: Database, settings: Settings
) -> None:
    answer = subscribe(client, admin_headers)
    if not settings.is_sqlite:
        assert mail_config(settings) is None
        assert str(answer["confirm_url"]).startswith("http://testserver/c/")
        assert deliver_mail(database, settings) == 0
        return
    assert answer.get("confirm_url") is None
    assert deliver_mail(database, settings) == 1
    db_path = settings.sqlite_path()
    assert db_path is not None
    (mail,) = list((default_maildir(db_path) / "new").iterdir())
    text = mail.read_text(encoding="utf-8")
    assert "To: ada@example.com" in text
    assert "From: prefcenter@localhost" in text
    assert "/c/" in text


class TestOutgoingMailPage:
    def test_needs_a_session(self, client: TestClient) -> None:
        for path in ("/admin/mail", "/admin/mail/maildir/anything"):
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 303
            assert answer.headers["location"] == "/admin/sign-in"

    def test_lists_the_mail_and_shows_its_text(
        self, client: TestClient, admin_headers: Headers, database: Database, settings: Settings
    ) -> None:
        subscribe(client, admin_headers)
        deliver_mail(database, settings)
        sign_in_with_key(client, admin_headers)

        page = client.get("/admin/mail")

        assert page.status_code == 200
        body = html.unescape(page.text)
        assert "Outgoing mail" in body
        assert ADA not in body  # masked everywhere
        if not settings.is_sqlite:
            assert "sends no mail of its own" in body
            return
        assert "a•••@example.com" in body
        assert "the Maildir beside the database" in body
        assert "Please confirm your subscription: Events near you" in body
        assert "sent" in body
        (href,) = re.findall(r'href="(/admin/mail/maildir/[^"]+)"', page.text)
        shown = client.get(html.unescape(href))
        assert shown.status_code == 200
        text = html.unescape(shown.text)
        assert "Please confirm your subscription: Events near you" in text
        assert "http://testserver/c/" in text
        assert "http://testserver/p/" in text
        assert ADA not in text

    @pytest.mark.parametrize("key", ["nope", "..%2F..%2Fetc%2Fpasswd", "%2E%2E", "x" * 201])
    def test_an_unknown_mail_is_404(
        self, client: TestClient, admin_headers: Headers, key: str
    ) -> None:
        sign_in_with_key(client, admin_headers)
        answer = client.get(f"/admin/mail/maildir/{key}")
        assert answer.status_code in (404, 422)
        assert "root:" not in answer.text

    def test_an_empty_outbox(self, client: TestClient, admin_headers: Headers) -> None:
        sign_in_with_key(client, admin_headers)
        page = client.get("/admin/mail")
        assert page.status_code == 200
        assert "Nothing queued yet." in page.text


def test_the_maildir_sits_beside_the_database(tmp_path: Path) -> None:
    assert default_maildir(tmp_path / "prefcenter.db") == tmp_path / "prefcenter.db.maildir"
