"""`prefcenter serve` runs one outbox worker inside itself (whatever `--workers` says) and stops
it gracefully on SIGTERM, exiting 0; `--no-worker` runs none."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prefcenter.apikeys.schemas import Scope
from tests.support.live_server import fresh_database_url, issue_live_key, live_server
from tests.support.mail_server import SENDER, SmtpServer, smtp_server

pytestmark = pytest.mark.slow

TOPIC = {"name": "Events", "kind": "marketing", "consent": "opt_in", "double_opt_in": True}


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


def env_for(server: SmtpServer) -> dict[str, str]:
    return {
        "PREFCENTER_MAIL_URL": server.url,
        "PREFCENTER_MAIL_FROM": SENDER,
        "PREFCENTER_OUTBOX_POLL_SECONDS": "0.1",
    }


def subscribe(base_url: str, headers: dict[str, str], email: str) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as api:
        assert api.put("/v1/topics/events", json=TOPIC).status_code in (200, 201)
        answer = api.post(
            "/v1/consents", json={"email": email, "topic": "events", "status": "subscribed"}
        )
        assert answer.json()["status"] == "pending", answer.text


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_one_worker_inside_two_server_processes_stopped_on_sigterm(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path, server: SmtpServer
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    headers = issue_live_key(url, Scope.ADMIN)
    with live_server(url, log_dir=tmp_path, workers=2, extra_env=env_for(server)) as live:
        for n in range(5):
            subscribe(live.base_url, headers, f"p{n}@example.com")
        mails = server.inbox.wait_for(5)
        live.process.send_signal(signal.SIGTERM)
        assert live.process.wait(timeout=30) == 0, live.log()
    assert sorted(m.rcpt_tos[0] for m in mails) == [f"p{n}@example.com" for n in range(5)]
    log = live.log()
    assert log.count("outbox worker") == 2  # one started, the same one stopped
    assert "stopped" in log


def test_no_worker_runs_none(
    request: pytest.FixtureRequest, tmp_path: Path, server: SmtpServer
) -> None:
    url = fresh_database_url(request, "sqlite", tmp_path)
    with live_server(
        url, log_dir=tmp_path, extra_args=("--no-worker",), extra_env=env_for(server)
    ) as live:
        assert "outbox worker" not in live.log()
