"""A backup taken from a real `prefcenter serve` while it records consent changes restores
into a trail that verifies, deep, against a checkpoint taken before the backup; and restore
is refused while that server runs."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from prefcenter.apikeys.schemas import Scope
from prefcenter.cli import cli
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS
from tests.support.live_server import REQUEST_TIMEOUT_S, issue_live_key, live_server

pytestmark = pytest.mark.slow
runner = CliRunner()


def events(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        (count,) = connection.execute("SELECT count(*) FROM audit_event").fetchone()
        return int(count)
    finally:
        connection.close()


def test_a_backup_taken_under_load_restores_with_its_proof(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prefcenter.db"
    path.write_bytes(sqlite_template.read_bytes())
    path.chmod(0o600)
    url = f"sqlite:///{path}"
    for name, value in (
        ("DATABASE_URL", url),
        ("SIGNING_KEYS", TEST_SIGNING_KEYS),
        ("AUDIT_KEY", TEST_AUDIT_KEY),
        ("MAIL_URL", "off"),
    ):
        monkeypatch.setenv(f"PREFCENTER_{name}", value)
    headers = issue_live_key(url, Scope.ADMIN)
    checkpoint, backup = tmp_path / "before.json", tmp_path / "backup.db"
    acknowledged: list[str] = []
    stop = threading.Event()

    with live_server(url, log_dir=tmp_path / "logs", extra_args=("--no-worker",)) as server:
        api = httpx.Client(base_url=server.base_url, headers=headers, timeout=REQUEST_TIMEOUT_S)

        def write() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                address = f"load{n}@example.com"
                answer = api.post(
                    "/v1/consents",
                    json={"email": address, "status": "subscribed", "topic": "newsletter"},
                )
                assert answer.status_code == 200, answer.text
                acknowledged.append(address)

        with api:
            topic = {"name": "Newsletter", "kind": "marketing", "consent": "opt_in"}
            assert api.put("/v1/topics/newsletter", json=topic).status_code in (200, 201)
            for n in range(5):
                body = {"email": f"early{n}@example.com", "status": "subscribed"}
                assert api.post("/v1/consents", json={**body, "topic": "newsletter"}).is_success
            made = runner.invoke(cli, ["audit", "checkpoint", "--output", str(checkpoint)])
            assert made.exit_code == 0, made.output

            writer = threading.Thread(target=write)
            writer.start()
            try:
                while len(acknowledged) < 20 and writer.is_alive():
                    stop.wait(0.01)
                taken = runner.invoke(cli, ["db", "backup", str(backup)])
                assert taken.exit_code == 0, taken.output
                during = len(acknowledged)
                while len(acknowledged) < during + 20 and writer.is_alive():
                    stop.wait(0.01)
            finally:
                stop.set()
                writer.join()

            refused = runner.invoke(cli, ["db", "restore", str(backup)])
            assert refused.exit_code == 1
            assert "open in another process" in " ".join(refused.stderr.split())

    written = events(path)
    in_backup = events(backup)
    assert 6 + 20 <= in_backup < written  # taken while writes went on, before the last ones

    restored = runner.invoke(cli, ["db", "restore", str(backup)])
    assert restored.exit_code == 0, restored.output
    assert events(path) == in_backup
    assert events(path.with_name("prefcenter.db.before-restore")) == written

    verified = runner.invoke(cli, ["audit", "verify", "--deep", "--checkpoint", str(checkpoint)])
    answer = json.loads(verified.stdout.strip().splitlines()[-1])
    assert (verified.exit_code, answer["ok"], answer["checked"]) == (0, True, in_backup)
