"""A worker killed with `kill -9` in the middle of its deliveries (to a relay that accepts
slowly) loses nothing: after a restart every mail is delivered at least once, and a mail sent
again carries the same Message-ID. On SQLite and PostgreSQL, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import select

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.models import AuditEvent
from prefcenter.audit.verify import verify_chain
from prefcenter.db import Database
from prefcenter.delivery.test_mail import queue_test_mail
from prefcenter.mail.config import mail_config
from prefcenter.outbox.models import OutboxMessage
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS
from tests.support.live_server import fresh_database_url
from tests.support.mail_server import SENDER, Clock, Inbox, SmtpServer, mail_settings, smtp_server

pytestmark = pytest.mark.slow

MAILS = 20
WAIT_S = 90.0


def start_worker(url: str, server: SmtpServer, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
    env.update(
        PREFCENTER_DATABASE_URL=url,
        PREFCENTER_SIGNING_KEYS=TEST_SIGNING_KEYS,
        PREFCENTER_AUDIT_KEY=TEST_AUDIT_KEY,
        PREFCENTER_MAIL_URL=server.url,
        PREFCENTER_MAIL_FROM=SENDER,
        # A claim of the killed worker is taken over after this long.
        PREFCENTER_OUTBOX_LEASE_SECONDS="2",
        PREFCENTER_OUTBOX_POLL_SECONDS="0.1",
    )
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "prefcenter", "worker"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )


def statuses(database: Database) -> Counter[str]:
    with database.transaction(write=False) as session:
        return Counter(row.status for row in session.exec(select(OutboxMessage)))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_killed_worker_loses_no_mail(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    log = tmp_path / "worker.log"
    with smtp_server(Inbox(delay_s=0.1)) as server:
        settings = mail_settings(url, server)
        database = Database(settings)
        config = mail_config(settings)
        assert config is not None
        with database.transaction(write=True) as session:
            queued = {
                queue_test_mail(
                    session, config, recipient=f"p{n}@example.com", now=Clock().now
                ).message_id
                for n in range(MAILS)
            }

        first = start_worker(url, server, log)
        try:
            server.inbox.wait_for(3)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=15)
        before_kill = {m.message_id for m in server.inbox.mails()}
        assert 0 < len(before_kill) < MAILS
        assert statuses(database)["sent"] == 0  # killed before it recorded anything

        second = start_worker(url, server, log)
        try:
            deadline = time.monotonic() + WAIT_S
            while statuses(database)["sent"] < MAILS:
                assert second.poll() is None, log.read_text()
                assert time.monotonic() < deadline, (statuses(database), log.read_text())
                time.sleep(0.1)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, log.read_text()

        received = Counter(m.message_id for m in server.inbox.mails())
        assert set(received) == queued  # every mail, and nothing else
        # Those sent before the kill went again, under the same Message-ID.
        assert all(received[message_id] >= 2 for message_id in before_kill)
        with database.transaction(write=False) as session:
            sent_events = session.exec(
                select(AuditEvent).where(AuditEvent.kind == "mail_sent")
            ).all()
        assert len(sent_events) == MAILS  # recorded once each, however often sent
        assert verify_chain(database, AuditKeys.from_settings(settings)).ok
        database.dispose()
