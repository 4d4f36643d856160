"""`prefcenter audit verify` and `prefcenter audit checkpoint`: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from prefcenter.cli import cli
from prefcenter.settings import Settings
from tests.audit.tampering import rechain, tamper
from tests.support.factories import make_topic, record_change
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS

runner = CliRunner()
Headers = dict[str, str]


@pytest.fixture
def trail(
    monkeypatch: pytest.MonkeyPatch, client: TestClient, admin_headers: Headers, settings: Settings
) -> str:
    monkeypatch.setenv("PREFCENTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PREFCENTER_SIGNING_KEYS", TEST_SIGNING_KEYS)
    monkeypatch.setenv("PREFCENTER_AUDIT_KEY", TEST_AUDIT_KEY)
    make_topic(client, admin_headers)
    for address in ("ada@example.com", "bob@example.com", "cy@example.com"):
        record_change(client, admin_headers, address, "subscribed", topic="newsletter")
    return settings.database_url


def verify(*args: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(cli, ["audit", "verify", *args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


class TestAuditVerify:
    def test_a_sound_chain_exits_zero(self, trail: str) -> None:
        code, answer = verify("--deep")
        assert code == 0
        assert answer == {
            "ok": True,
            "checked": 4,
            "first_bad_seq": None,
            "first_bad_contact": None,
            "detail": None,
        }

    def test_an_edit_exits_one_naming_the_seq(self, trail: str) -> None:
        tamper(trail, "UPDATE audit_event SET source = 'import' WHERE seq = 3")
        code, answer = verify()
        assert (code, answer["ok"], answer["first_bad_seq"]) == (1, False, 3)

    def test_a_truncated_tail_fails_against_a_checkpoint(self, trail: str, tmp_path: Path) -> None:
        checkpoint = tmp_path / "checkpoint.json"
        made = runner.invoke(cli, ["audit", "checkpoint", "--output", str(checkpoint)])
        assert made.exit_code == 0, made.output
        assert verify("--checkpoint", str(checkpoint))[0] == 0

        tamper(trail, "DELETE FROM audit_evidence WHERE seq = 4")
        tamper(trail, "DELETE FROM audit_event WHERE seq = 4")
        rechain(trail)
        assert verify()[0] == 0

        code, answer = verify("--checkpoint", str(checkpoint))
        assert (code, answer["first_bad_seq"]) == (1, 4)

    def test_a_forged_checkpoint_is_refused(self, trail: str, tmp_path: Path) -> None:
        printed = runner.invoke(cli, ["audit", "checkpoint"])
        assert printed.exit_code == 0, printed.output
        statement = json.loads(printed.stdout)
        statement["hash"] = "0" * 64
        forged = tmp_path / "forged.json"
        forged.write_text(json.dumps(statement), encoding="utf-8")

        result = runner.invoke(cli, ["audit", "verify", "--checkpoint", str(forged)])

        assert result.exit_code == 1
        assert "signature" in result.stderr
