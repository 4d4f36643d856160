"""`prefcenter worker --once` and `prefcenter mail test ADDRESS`, against a real SMTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from prefcenter.audit.models import AuditEvent
from prefcenter.cli import cli
from prefcenter.db import Database
from prefcenter.delivery.test_mail import queue_test_mail
from prefcenter.mail.config import mail_config
from prefcenter.outbox.models import OutboxMessage
from prefcenter.settings import Settings
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS
from tests.support.mail_server import (
    SENDER,
    Clock,
    SmtpServer,
    free_port,
    mail_settings,
    smtp_server,
)

runner = CliRunner()


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, server: SmtpServer) -> Settings:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    monkeypatch.setenv("PREFCENTER_MAIL_URL", server.url)
    monkeypatch.setenv("PREFCENTER_MAIL_FROM", SENDER)
    return mail_settings(database_url, server)


def rows(database: Database) -> list[OutboxMessage]:
    with database.transaction(write=False) as session:
        return list(session.exec(select(OutboxMessage)))


class TestWorkerOnce:
    def test_delivers_what_is_due_and_says_so(
        self, cli_env: Settings, database: Database, server: SmtpServer
    ) -> None:
        config = mail_config(cli_env)
        assert config is not None
        with database.transaction(write=True) as session:
            for n in range(3):
                queue_test_mail(session, config, recipient=f"p{n}@example.com", now=Clock().now)

        result = runner.invoke(cli, ["worker", "--once"])

        assert result.exit_code == 0, result.output
        assert "sent 3" in result.stderr
        assert len(server.inbox.wait_for(3)) == 3
        assert {r.status for r in rows(database)} == {"sent"}

    def test_a_relay_that_is_down_exits_1_with_its_error(
        self, cli_env: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PREFCENTER_MAIL_URL", f"smtp://127.0.0.1:{free_port()}?starttls=off")
        config = mail_config(cli_env)
        assert config is not None
        with database.transaction(write=True) as session:
            queue_test_mail(session, config, recipient="p@example.com", now=Clock().now)

        result = runner.invoke(cli, ["worker", "--once"])

        assert result.exit_code == 1
        assert "to retry 1" in result.stderr
        assert "error:" in result.stderr
        ((row),) = rows(database)
        assert row.status == "queued"  # tried again later


class TestMailTest:
    def test_prints_the_message_id_of_the_mail_it_sent(
        self, cli_env: Settings, database: Database, server: SmtpServer
    ) -> None:
        result = runner.invoke(cli, ["mail", "test", "Ada@Example.com"])

        assert result.exit_code == 0, result.output
        message_id = result.stdout.strip()
        (mail,) = server.inbox.wait_for(1)
        assert mail.message_id == message_id
        assert mail.rcpt_tos == ("ada@example.com",)
        assert mail.message()["Subject"] == "Test email from prefcenter"
        with database.transaction(write=False) as session:
            event = session.exec(select(AuditEvent).where(AuditEvent.kind == "mail_sent")).one()
        assert event.contact_id is None
        assert event.address_hash is not None

    def test_prints_the_transports_error_and_never_retries(
        self, cli_env: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PREFCENTER_MAIL_URL", f"smtp://127.0.0.1:{free_port()}?starttls=off")

        result = runner.invoke(cli, ["mail", "test", "ada@example.com"])

        assert result.exit_code == 1
        assert "not sent:" in result.stderr
        assert "Connect" in result.stderr or "refused" in result.stderr
        assert result.stdout == ""
        ((row),) = rows(database)
        assert row.status == "failed"

    def test_a_bad_address_is_refused(self, cli_env: Settings, database: Database) -> None:
        result = runner.invoke(cli, ["mail", "test", "not an address\r\nBcc: x@example.com"])
        assert result.exit_code == 2
        assert rows(database) == []

    def test_with_mail_off_it_says_how_to_turn_it_on(
        self, cli_env: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PREFCENTER_MAIL_URL", "off")
        result = runner.invoke(cli, ["mail", "test", "ada@example.com"])
        assert result.exit_code == 2
        assert "PREFCENTER_MAIL_URL" in result.stderr
