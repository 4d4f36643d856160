"""`prefcenter admins create|list|disable`: console users from the command line."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter.app import create_app
from prefcenter.cli import cli
from prefcenter.settings import Settings
from tests.admin.console import PASSWORD, sign_in
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    return settings


class TestAdmins:
    def test_created_user_can_sign_in(self, cli_env: Settings) -> None:
        result = runner.invoke(
            cli, ["admins", "create", "Desk", "--password-stdin"], input=PASSWORD + "\n"
        )

        assert result.exit_code == 0, result.output
        assert "created admin user desk" in result.stderr
        assert PASSWORD not in result.output
        with TestClient(create_app(cli_env)) as client:
            assert sign_in(client, username="desk", password=PASSWORD).status_code == 303

    def test_the_password_is_asked_twice(self, cli_env: Settings) -> None:
        mismatch = runner.invoke(
            cli, ["admins", "create", "desk"], input=f"{PASSWORD}\nsomething else entirely\n"
        )
        assert mismatch.exit_code != 0

        result = runner.invoke(cli, ["admins", "create", "desk"], input=f"{PASSWORD}\n{PASSWORD}\n")

        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output  # hidden input is not echoed

    def test_a_short_password_is_refused(self, cli_env: Settings) -> None:
        result = runner.invoke(
            cli, ["admins", "create", "desk", "--password-stdin"], input="short\n"
        )

        assert result.exit_code == 1
        assert "at least 12 characters" in result.stderr

    def test_a_taken_username_is_refused(self, cli_env: Settings) -> None:
        args = ["admins", "create", "desk", "--password-stdin"]
        assert runner.invoke(cli, args, input=PASSWORD + "\n").exit_code == 0

        result = runner.invoke(cli, args, input=PASSWORD + "\n")

        assert result.exit_code == 1
        assert "already" in result.stderr

    def test_list_and_disable(self, cli_env: Settings) -> None:
        runner.invoke(cli, ["admins", "create", "desk", "--password-stdin"], input=PASSWORD + "\n")

        disabled = runner.invoke(cli, ["admins", "disable", "desk"])
        listed = runner.invoke(cli, ["admins", "list"])

        assert disabled.exit_code == 0, disabled.output
        assert "disabled admin user desk" in disabled.stderr
        assert listed.exit_code == 0
        assert "desk" in listed.stdout
        assert "yes" in listed.stdout
        assert "argon2" not in listed.stdout
        with TestClient(create_app(cli_env)) as client:
            assert sign_in(client, username="desk", password=PASSWORD).status_code == 401

    def test_disabling_an_unknown_user_fails_clearly(self, cli_env: Settings) -> None:
        result = runner.invoke(cli, ["admins", "disable", "nobody"])

        assert result.exit_code == 1
        assert "no admin user" in result.stderr
