"""PREFCENTER_MAIL_URL and PREFCENTER_MAIL_FROM: what each form means, the defaults, and bad
values refused at start with a message that says what to set (and never the password)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefcenter.app import create_app
from prefcenter.cli import cli
from prefcenter.mail.config import (
    MaildirTarget,
    SmtpSecurity,
    SmtpTarget,
    mail_config,
    new_message_id,
    parse_mail_url,
    parse_sender,
)
from prefcenter.settings import ConfigError, Settings
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS, make_settings

SECRET = "s3cret-pa55"


def settings_for(database_url: str = "sqlite:///./x.db", **fields: str | None) -> Settings:
    fields.setdefault("mail_url", None)
    return make_settings(database_url, **fields)


class TestMailUrl:
    def test_smtp_is_submission_with_starttls_required(self) -> None:
        target = parse_mail_url("smtp://ada:pw@mail.example.com")
        assert target == SmtpTarget("mail.example.com", 587, "ada", "pw", SmtpSecurity.STARTTLS)

    def test_smtps_is_tls_on_465(self) -> None:
        target = parse_mail_url("smtps://ada:pw@mail.example.com")
        assert isinstance(target, SmtpTarget)
        assert (target.port, target.security) == (465, SmtpSecurity.TLS)

    def test_port_and_percent_encoded_credentials(self) -> None:
        target = parse_mail_url(
            "smtp://AKIA%2Fx:p%40ss%3Aw@email-smtp.eu-west-1.amazonaws.com:2587"
        )
        assert target == SmtpTarget(
            "email-smtp.eu-west-1.amazonaws.com", 2587, "AKIA/x", "p@ss:w", SmtpSecurity.STARTTLS
        )

    def test_a_relay_without_starttls_is_asked_for_explicitly(self) -> None:
        target = parse_mail_url("smtp://127.0.0.1:25?starttls=off")
        assert target == SmtpTarget("127.0.0.1", 25, None, None, SmtpSecurity.NONE)

    def test_no_starttls_is_allowed_with_a_password_only_on_this_host(self) -> None:
        target = parse_mail_url("smtp://u:pw@localhost:25?starttls=off")
        assert isinstance(target, SmtpTarget)
        assert target.security is SmtpSecurity.NONE
        with pytest.raises(ConfigError, match="clear text") as refused:
            parse_mail_url(f"smtp://u:{SECRET}@relay.example.com:25?starttls=off")
        assert SECRET not in str(refused.value)

    def test_an_ipv6_host(self) -> None:
        target = parse_mail_url("smtp://[::1]:2525?starttls=off")
        assert isinstance(target, SmtpTarget)
        assert (target.host, target.port) == ("::1", 2525)

    def test_maildir_takes_an_absolute_path(self) -> None:
        assert parse_mail_url("maildir:///var/mail/prefcenter") == MaildirTarget(
            Path("/var/mail/prefcenter")
        )

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("http://mail.example.com", "must be smtp://"),
            ("mail.example.com:587", "must be smtp://"),
            ("smtp://", "must be smtp://"),
            ("smtp://:587", "names no SMTP host"),
            (f"smtp://u:{SECRET}@bad_host!:587", "names no SMTP host"),
            (f"smtp://u:{SECRET}@mail.example.com:99999", "port"),
            (f"smtp://u:{SECRET}@mail.example.com:0", "port"),
            (f"smtp://u:{SECRET}@mail.example.com:x", "port"),
            (f"smtp://:{SECRET}@mail.example.com", "password but no user"),
            (f"smtp://u:{SECRET}@mail.example.com/inbox", "no path"),
            (f"smtp://u:{SECRET}@mail.example.com?tls=no", "only option"),
            (f"smtps://u:{SECRET}@mail.example.com?starttls=off", "only option"),
            (f"smtp://u:{SECRET}%0d%0a@mail.example.com", "control characters"),
            ("maildir://relative/path", "three slashes"),
            ("maildir:///var/mail?x=1", "three slashes"),
        ],
    )
    def test_bad_urls_are_refused_saying_why_without_the_password(
        self, url: str, says: str
    ) -> None:
        with pytest.raises(ConfigError, match=says) as refused:
            parse_mail_url(url)
        assert SECRET not in str(refused.value)
        assert "PREFCENTER_MAIL_URL" in str(refused.value)


class TestSender:
    @pytest.mark.parametrize(
        ("value", "header", "address"),
        [
            ("news@example.com", "news@example.com", "news@example.com"),
            (
                "Example Shop <news@example.com>",
                "Example Shop <news@example.com>",
                "news@example.com",
            ),
            ("prefcenter@localhost", "prefcenter@localhost", "prefcenter@localhost"),
        ],
    )
    def test_an_address_or_a_name_and_an_address(
        self, value: str, header: str, address: str
    ) -> None:
        assert parse_sender(value) == (header, address)

    @pytest.mark.parametrize(
        "value",
        ["news", "news@", "a@b@example.com", "Name <news@example.com", "<>", "news@exa mple.com"],
    )
    def test_anything_else_is_refused(self, value: str) -> None:
        with pytest.raises(ConfigError, match="PREFCENTER_MAIL_FROM"):
            parse_sender(value)


class TestDefaults:
    def test_sqlite_mails_into_a_maildir_beside_the_database(self, tmp_path: Path) -> None:
        config = mail_config(settings_for(f"sqlite:///{tmp_path / 'prefcenter.db'}"))
        assert config is not None
        assert config.default
        assert config.target == MaildirTarget(tmp_path / "prefcenter.db.maildir")
        assert config.sender == "prefcenter@localhost"
        assert config.domain == "localhost"

    def test_postgresql_sends_no_mail_unless_told(self) -> None:
        settings = settings_for("postgresql+psycopg://postgres@127.0.0.1/x")
        assert not settings.mail_enabled
        assert mail_config(settings) is None

    def test_in_memory_sqlite_has_nowhere_to_put_a_maildir(self) -> None:
        assert mail_config(settings_for("sqlite:///:memory:")) is None

    @pytest.mark.parametrize("off", ["off", "OFF"])
    def test_off_turns_the_default_off(self, off: str) -> None:
        settings = settings_for(mail_url=off)
        assert not settings.mail_enabled
        assert mail_config(settings) is None

    def test_a_configured_transport_needs_a_sender(self) -> None:
        with pytest.raises(ConfigError, match="PREFCENTER_MAIL_FROM is required"):
            mail_config(settings_for(mail_url="smtp://relay.example.com"))
        with pytest.raises(ConfigError, match="PREFCENTER_MAIL_FROM is required"):
            mail_config(settings_for(mail_url="maildir:///tmp/box"))

    def test_message_ids_are_unique_and_in_the_senders_domain(self) -> None:
        config = mail_config(
            settings_for(mail_url="smtp://relay.example.com", mail_from="Shop <news@Example.COM>")
        )
        assert config is not None
        ids = {new_message_id(config) for _ in range(1000)}
        assert len(ids) == 1000
        assert all(i.startswith("<") and i.endswith("@example.com>") for i in ids)


class TestRefusedAtStart:
    def test_the_app_does_not_start_with_a_bad_url(self, tmp_path: Path) -> None:
        settings = settings_for(
            f"sqlite:///{tmp_path / 'p.db'}", mail_url=f"smtps://u:{SECRET}@relay:465?x=y"
        )
        with pytest.raises(ConfigError, match="only option"):
            create_app(settings)

    def test_the_command_line_says_what_to_set_and_exits_2(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("PREFCENTER_DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
        monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
        monkeypatch.setenv("PREFCENTER_MAIL_URL", f"smtp://u:{SECRET}@relay.example.com")
        monkeypatch.delenv("PREFCENTER_MAIL_FROM", raising=False)
        result = CliRunner().invoke(cli, ["db", "upgrade"])
        assert result.exit_code == 2
        assert "PREFCENTER_MAIL_FROM is required" in result.stderr
        assert SECRET not in result.output
