"""`prefcenter notices publish|status` on both engines, and the console's notices page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter import cli
from prefcenter.app import create_app
from prefcenter.audit.schemas import EventKind
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.admin.console import sign_in_with_key
from tests.notices.helpers import deliver, notification, publish, put_notice
from tests.support.factories import Headers, audit_events, record_change
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS
from tests.support.mail_server import SENDER, SmtpServer, mail_settings, smtp_server

runner = CliRunner()


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, database_url: str, server: SmtpServer) -> Settings:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    monkeypatch.setenv("PREFCENTER_MAIL_URL", server.url)
    monkeypatch.setenv("PREFCENTER_MAIL_FROM", SENDER)
    return mail_settings(database_url, server)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def test_publish_then_status(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    tmp_path: Path,
) -> None:
    record_change(client, writer_headers, "ada@example.com", "unsubscribed")
    put_notice(client, admin_headers)
    text = tmp_path / "policy.md"
    text.write_text("We now name the company that sends our mail.\n\nThe rest.\n")
    published = runner.invoke(
        cli.cli,
        [
            "notices",
            "publish",
            str(text),
            "--notice",
            "privacy",
            "--version",
            "2027-01",
            "--effective-at",
            "2027-06-01T00:00:00Z",
            "--material",
            "--stall-seconds",
            "0",
        ],
    )
    assert published.exit_code == 0, published.output
    said = " ".join(published.output.split())
    assert "1 notice mails queued" in said
    assert "is a worker running" in said
    (event,) = [e for e in audit_events(database) if e.kind is EventKind.NOTICE_PUBLISHED]
    assert event.actor.startswith("cli:")
    assert event.source == "cli"
    listed = client.get("/v1/notices/privacy/versions", headers=admin_headers).json()
    assert listed["versions"][0]["summary"] == "We now name the company that sends our mail."

    status = runner.invoke(cli.cli, ["notices", "status", "privacy", "2027-01"])
    assert status.exit_code == 0, status.output
    assert "queued 1, sent 0" in status.output
    deliver(database, settings)
    assert len(server.inbox.mails()) == 1
    status = runner.invoke(cli.cli, ["notices", "status", "privacy", "2027-01"])
    assert "queued 0, sent 1" in status.output


def test_too_soon_is_refused_with_exit_1(
    client: TestClient, admin_headers: Headers, tmp_path: Path
) -> None:
    put_notice(client, admin_headers)
    text = tmp_path / "policy.md"
    text.write_text("Words.\n")
    refused = runner.invoke(
        cli.cli,
        [
            "notices",
            "publish",
            str(text),
            "--notice",
            "privacy",
            "--version",
            "v1",
            "--effective-at",
            "2020-01-01T00:00:00Z",
        ],
    )
    assert refused.exit_code == 1
    assert "earliest effective_at" in " ".join(refused.output.split())
    unknown = runner.invoke(cli.cli, ["notices", "status", "privacy", "v1"])
    assert unknown.exit_code == 1


def test_the_console_page_shows_versions_and_their_run(
    client: TestClient, admin_headers: Headers, writer_headers: Headers
) -> None:
    record_change(client, writer_headers, "ada@example.com", "unsubscribed")
    put_notice(client, admin_headers)
    publish(client, admin_headers, "v<1>", expect=422)
    publish(client, admin_headers, "v2", summary="<b>bold</b> words")
    assert notification(client, admin_headers, "v2")["queued"] == 1
    assert client.get("/admin/notices", follow_redirects=False).status_code in (303, 401)
    sign_in_with_key(client, admin_headers)
    page = client.get("/admin/notices")
    assert page.status_code == 200
    assert "Privacy policy" in page.text
    assert "&lt;b&gt;bold&lt;/b&gt; words" in page.text
    assert "<td>1</td><td>0</td><td>0</td><td>0</td><td>0</td>" in page.text


def test_publish_for_your_own_sender_queues_no_mail(
    client: TestClient,
    admin_headers: Headers,
    writer_headers: Headers,
    database: Database,
    settings: Settings,
    server: SmtpServer,
    tmp_path: Path,
) -> None:
    record_change(client, writer_headers, "ada@example.com", "unsubscribed")
    put_notice(client, admin_headers)
    text = tmp_path / "policy.md"
    text.write_text("We now name the company that sends our mail.\n")
    published = runner.invoke(
        cli.cli,
        [
            "notices",
            "publish",
            str(text),
            "--notice",
            "privacy",
            "--version",
            "2027-01",
            "--effective-at",
            "2027-06-01T00:00:00Z",
            "--material",
            "--delivery",
            "export",
        ],
    )
    assert published.exit_code == 0, published.output
    assert "is a worker running" not in published.output
    deliver(database, settings)
    assert server.inbox.mails() == []
    status = runner.invoke(cli.cli, ["notices", "status", "privacy", "2027-01"])
    assert "queued 1, sent 0" in status.output
