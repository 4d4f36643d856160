"""`prefcenter import` through typer's runner on both engines: the report, `--json`, exit
codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter.cli import cli
from prefcenter.settings import Settings
from tests.support.factories import Headers, make_topic
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS

runner = CliRunner()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    return settings


@pytest.fixture
def mailchimp_file(tmp_path: Path) -> Path:
    path = tmp_path / "unsubscribed_members_export_1a2b.csv"
    path.write_bytes(
        b"Email Address,First Name,UNSUB_TIME\r\n"
        b"ada@example.com,Ada,2024-03-14 09:40:28\r\n"
        b"grace@example.com,Grace,2024-03-14 09:41:00\r\n"
    )
    return path


class TestImportCommand:
    def test_json_report(
        self,
        cli_env: Settings,
        client: TestClient,
        admin_headers: Headers,
        mailchimp_file: Path,
    ) -> None:
        make_topic(client, admin_headers, "newsletter")

        result = runner.invoke(
            cli,
            ["import", str(mailchimp_file), "--topic", "newsletter", "--source", "mc", "--json"],
        )

        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["format"] == "mailchimp"
        assert report["applied"]["unsubscribed"] == 2
        assert report["file_name"] == mailchimp_file.name

    def test_human_report(
        self,
        cli_env: Settings,
        client: TestClient,
        admin_headers: Headers,
        mailchimp_file: Path,
    ) -> None:
        make_topic(client, admin_headers, "newsletter")

        result = runner.invoke(
            cli, ["import", str(mailchimp_file), "--topic", "newsletter", "--source", "mc"]
        )

        assert result.exit_code == 0, result.output
        assert "applied: unsubscribed" in result.stdout

    def test_an_unknown_topic_exits_2(self, cli_env: Settings, mailchimp_file: Path) -> None:
        result = runner.invoke(
            cli, ["import", str(mailchimp_file), "--topic", "nope", "--source", "mc"]
        )

        assert result.exit_code == 2
        assert "no topic 'nope'" in result.stderr
