"""`prefcenter worker` stopped with SIGTERM in the middle of its deliveries (a relay that
accepts slowly): the mail being sent is finished and recorded, the rest of its claim given
back at once (not left to run out), and it exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlmodel import select

from prefcenter.db import Database
from prefcenter.delivery.test_mail import queue_test_mail
from prefcenter.mail.config import mail_config
from prefcenter.outbox.models import OutboxMessage
from tests.delivery.test_crash import start_worker
from tests.support.live_server import fresh_database_url
from tests.support.mail_server import Clock, Inbox, mail_settings, smtp_server

pytestmark = [pytest.mark.slow, pytest.mark.faults]

MAILS = 30


def test_sigterm_finishes_the_mail_in_hand_and_gives_the_rest_back(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = fresh_database_url(request, "postgresql", tmp_path)
    log = tmp_path / "worker.log"
    with smtp_server(Inbox(delay_s=0.2)) as server:
        settings = mail_settings(url, server)
        database = Database(settings)
        config = mail_config(settings)
        assert config is not None
        with database.transaction(write=True) as session:
            for n in range(MAILS):
                queue_test_mail(session, config, recipient=f"p{n}@example.com", now=Clock().now)
        worker = start_worker(url, server, log)
        try:
            server.inbox.wait_for(3)
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
        received = len(server.inbox.mails())
        with database.transaction(write=False) as session:
            rows = session.exec(select(OutboxMessage)).all()
        database.dispose()

    assert code == 0, log.read_text()
    assert [r.id for r in rows if r.claimed_by is not None] == [], "a claim was left behind"
    sent = [r for r in rows if r.status == "sent"]
    assert len(sent) == received  # every mail that went out is recorded as sent
    assert 0 < received < MAILS, "the signal came after every mail: it interrupted nothing"
    assert {r.status for r in rows} == {"sent", "queued"}
