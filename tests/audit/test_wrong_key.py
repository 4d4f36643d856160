"""The audit key cannot rotate: `prefcenter audit verify` under another key says that the key
is wrong, instead of calling the first event with a keyed digest tampered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter.audit.key_check import key_matches_trail
from prefcenter.audit.keys import AuditKeys
from prefcenter.cli import cli
from prefcenter.db import Database
from prefcenter.settings import Settings
from tests.audit.tampering import tamper
from tests.audit.test_cli import verify
from tests.support.factories import make_topic, record_change
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS, make_settings

runner = CliRunner()
Headers = dict[str, str]
OTHER_AUDIT_KEY = "another-audit-key-0123456789abcdefghijklmnop"


@pytest.fixture
def trail(
    monkeypatch: pytest.MonkeyPatch, client: TestClient, admin_headers: Headers, settings: Settings
) -> str:
    """Three consent changes with evidence, and the CLI's environment pointing at them."""
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    make_topic(client, admin_headers)
    for address in ("ada@example.com", "bob@example.com", "cy@example.com"):
        record_change(client, admin_headers, address, "subscribed", topic="newsletter")
    return settings.database_url


def keys_of(audit_key: str) -> AuditKeys:
    return AuditKeys.from_settings(make_settings("sqlite:///unused.db", audit_key=audit_key))


class TestWrongAuditKey:
    def test_verify_names_the_key_not_an_event(
        self, trail: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", OTHER_AUDIT_KEY)

        result = runner.invoke(cli, ["audit", "verify", "--deep"])

        assert result.exit_code == 1
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        assert answer["ok"] is False
        assert answer["first_bad_seq"] is None
        assert "the audit key does not match the one that wrote this trail" in answer["detail"]
        assert keys_of(OTHER_AUDIT_KEY).key_id in answer["detail"]
        assert "audit key does not match" in " ".join(result.stderr.split())

    def test_verify_with_a_checkpoint_names_the_key_too(
        self, trail: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        checkpoint = tmp_path / "checkpoint.json"
        made = runner.invoke(cli, ["audit", "checkpoint", "--output", str(checkpoint)])
        assert made.exit_code == 0, made.output
        monkeypatch.setenv("PREFCENTER_AUDIT_KEY", OTHER_AUDIT_KEY)

        code, answer = verify("--checkpoint", str(checkpoint))

        assert code == 1
        assert "audit key does not match" in str(answer["detail"])

    def test_one_edited_document_under_the_right_key_is_still_named(self, trail: str) -> None:
        tamper(
            trail, "UPDATE audit_evidence SET document = :edited WHERE seq = 3", {"edited": b"{}"}
        )

        code, answer = verify()

        assert (code, answer["first_bad_seq"]) == (1, 3)
        assert "audit key" not in str(answer["detail"])


class TestKeyMatchesTrail:
    def test_an_empty_trail_tells_nothing(self, database: Database, settings: Settings) -> None:
        with database.transaction(write=False) as session:
            assert key_matches_trail(session, keys_of(OTHER_AUDIT_KEY)) is None
            assert key_matches_trail(session, AuditKeys.from_settings(settings)) is None

    def test_the_right_key_matches_and_another_does_not(
        self, trail: str, settings: Settings
    ) -> None:
        database = Database(settings)
        try:
            with database.transaction(write=False) as session:
                assert key_matches_trail(session, AuditKeys.from_settings(settings)) is True
                assert key_matches_trail(session, keys_of(OTHER_AUDIT_KEY)) is False
        finally:
            database.dispose()
