"""A standalone `prefcenter worker --metrics-listen` (a real process) shows what it delivered:
its outbox counts, beside the outbox's state read from the database; it still stops with
status 0 on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from prefcenter.cli import cli
from prefcenter.db import Database
from prefcenter.delivery.test_mail import queue_test_mail
from prefcenter.mail.config import mail_config
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS
from tests.support.live_server import HOST, free_port, fresh_database_url
from tests.support.mail_server import SENDER, Clock, SmtpServer, mail_settings, smtp_server

pytestmark = pytest.mark.slow

MAILS = 3
WAIT_S = 60.0


def start_worker(url: str, server: SmtpServer, log: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
    env.update(
        PREFCENTER_DATABASE_URL=url,
        PREFCENTER_SIGNING_KEYS=TEST_SIGNING_KEYS,
        PREFCENTER_AUDIT_KEY=TEST_AUDIT_KEY,
        PREFCENTER_MAIL_URL=server.url,
        PREFCENTER_MAIL_FROM=SENDER,
        PREFCENTER_OUTBOX_POLL_SECONDS="0.1",
    )
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "prefcenter", "worker", "--metrics-listen", f"{HOST}:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_until_sent(port: int, count: int, log: Path) -> dict[tuple[str, Any], float]:
    sent = ("prefcenter_outbox_attempts_total", (("kind", "mail"), ("outcome", "sent")))
    deadline = time.monotonic() + WAIT_S
    found: dict[tuple[str, Any], float] = {}
    with httpx.Client(timeout=5.0) as client:
        while found.get(sent) != count:
            assert time.monotonic() < deadline, (found, log.read_text())
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                found = samples(client.get(f"http://{HOST}:{port}/metrics").text)
            time.sleep(0.1)
    return found


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_standalone_worker_shows_its_deliveries_on_its_own_listener(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    log = tmp_path / "worker.log"
    port = free_port()
    with smtp_server() as server:
        settings = mail_settings(url, server)
        config = mail_config(settings)
        assert config is not None
        database = Database(settings)
        with database.transaction(write=True) as session:
            for n in range(MAILS):
                queue_test_mail(session, config, recipient=f"p{n}@example.com", now=Clock().now)
        database.dispose()
        worker = start_worker(url, server, log, port)
        try:
            found = scrape_until_sent(port, MAILS, log)
            server.inbox.wait_for(MAILS)
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)

    assert code == 0, log.read_text()
    # The outbox's state, read from the database by the worker's own listener.
    assert found[("prefcenter_database_up", ())] == 1
    assert found[("prefcenter_outbox_queued_messages", (("kind", "mail"),))] == 0
    assert ("prefcenter_outbox_attempts_total", (("kind", "mail"), ("outcome", "retry"))) not in (
        found
    )


def test_a_listen_address_that_is_not_host_port_is_refused() -> None:
    answer = CliRunner().invoke(cli, ["worker", "--metrics-listen", "9100"])
    assert answer.exit_code == 2
    assert "host:port" in answer.output
