"""The `prefcenter` command: migrate, and issue, list and revoke API keys."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter.app import create_app
from prefcenter.cli import cli
from prefcenter.settings import Settings
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    return settings


def create_key(*args: str) -> str:
    result = runner.invoke(cli, ["api-keys", "create", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


class TestApiKeys:
    def test_created_key_authenticates_with_its_scopes(self, cli_env: Settings) -> None:
        secret = create_key("--name", "crm", "--scope", "consent:read")
        with TestClient(create_app(cli_env)) as client:
            headers = {"Authorization": f"Bearer {secret}"}
            lookup = client.post(
                "/v1/contacts/lookup", json={"emails": ["a@example.com"]}, headers=headers
            )
            assert lookup.status_code == 200
            write = client.post(
                "/v1/consents",
                json={"email": "a@example.com", "status": "unsubscribed"},
                headers=headers,
            )
            assert write.status_code == 403

    def test_secret_is_the_last_line_of_stdout_and_only_there(self, cli_env: Settings) -> None:
        result = runner.invoke(cli, ["api-keys", "create", "--name", "ops", "--scope", "admin"])
        assert result.exit_code == 0
        secret = result.stdout.strip().splitlines()[-1]
        assert secret.startswith("pck_")
        assert secret not in result.stderr

    def test_list_shows_keys_without_secrets(self, cli_env: Settings) -> None:
        secret = create_key("--name", "crm", "--scope", "links", "--scope", "eligibility")
        result = runner.invoke(cli, ["api-keys", "list"])
        assert result.exit_code == 0
        assert "crm" in result.stdout
        assert "eligibility links" in result.stdout
        assert secret not in result.stdout

    def test_revoked_key_is_refused_at_once(self, cli_env: Settings) -> None:
        secret = create_key("--name", "crm", "--scope", "admin")
        with TestClient(create_app(cli_env)) as client:
            headers = {"Authorization": f"Bearer {secret}"}
            assert client.get("/v1/topics", headers=headers).status_code == 200
            result = runner.invoke(cli, ["api-keys", "revoke", "1"])
            assert result.exit_code == 0, result.output
            assert "revoked" in result.stderr
            assert client.get("/v1/topics", headers=headers).status_code == 401

    def test_revoking_an_unknown_key_fails_clearly(self, cli_env: Settings) -> None:
        result = runner.invoke(cli, ["api-keys", "revoke", "999"])
        assert result.exit_code == 1
        assert "no API key with id 999" in result.stderr

    @pytest.mark.parametrize("name", ["ops\udcff", "ops\x00", "tab\there"])
    def test_a_name_that_is_not_plain_text_is_refused_and_nothing_stored(
        self, cli_env: Settings, name: str
    ) -> None:
        # "\udcff": what Python makes of a non-UTF-8 byte in argv (surrogateescape).
        result = runner.invoke(cli, ["api-keys", "create", "--name", name, "--scope", "admin"])
        assert result.exit_code != 0
        assert "printable characters" in result.stderr
        listed = runner.invoke(cli, ["api-keys", "list"])
        assert listed.exit_code == 0
        assert "ops" not in listed.stdout

    def test_unknown_scope_is_refused(self, cli_env: Settings) -> None:
        result = runner.invoke(cli, ["api-keys", "create", "--name", "x", "--scope", "root"])
        assert result.exit_code == 2
        assert "root" in result.stderr


def test_db_upgrade_is_idempotent(cli_env: Settings) -> None:
    result = runner.invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "database at" in result.stderr


def test_missing_signing_keys_on_postgres_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/x")
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", "")
    result = runner.invoke(cli, ["api-keys", "list"])
    assert result.exit_code == 2
    assert "PREFCENTER_SIGNING_KEYS is required" in result.stderr
