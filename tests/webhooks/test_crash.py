"""A worker killed with `kill -9` in the middle of its webhook deliveries (to a receiver that
answers slowly) loses nothing: after a restart every change is delivered at least once, a
delivery sent again carries the same webhook-id, and each contact's deliveries arrive in
`seq` order. On SQLite and PostgreSQL, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from prefcenter.apikeys.schemas import Scope
from prefcenter.app import create_app
from prefcenter.db import Database
from tests.support.factories import make_topic
from tests.support.harness import TEST_AUDIT_KEY, TEST_SIGNING_KEYS, issue_key, make_settings
from tests.support.live_server import fresh_database_url
from tests.webhooks.helpers import change, create_endpoint, deliveries
from tests.webhooks.receiver import Delivery, Inbox, Receiver, receiver

pytestmark = pytest.mark.slow

CONTACTS = 6
CHANGES_EACH = 4
WAIT_S = 90.0


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFCENTER_")}
    env.update(
        PREFCENTER_DATABASE_URL=url,
        PREFCENTER_SIGNING_KEYS=TEST_SIGNING_KEYS,
        PREFCENTER_AUDIT_KEY=TEST_AUDIT_KEY,
        PREFCENTER_MAIL_URL="off",
        PREFCENTER_WEBHOOKS_ALLOW_PRIVATE="true",
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


def slowly(_: Delivery) -> tuple[int, dict[str, str]]:
    time.sleep(0.15)
    return 200, {}


def sent(database: Database) -> int:
    return sum(1 for r in deliveries(database) if r.status == "sent")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_killed_worker_loses_no_delivery_and_keeps_each_contacts_order(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    settings = make_settings(url, webhooks_allow_private=True)
    database = Database(settings)
    log = tmp_path / "worker.log"
    inbox = Inbox(answer=slowly)
    with receiver(inbox) as hooks, TestClient(create_app(settings)) as client:
        admin = issue_key(database, Scope.ADMIN)
        writer = issue_key(database, Scope.CONSENT_WRITE)
        make_topic(client, admin, "newsletter")
        endpoint = create_endpoint(client, admin, hooks.url)
        for round_ in range(CHANGES_EACH):
            for n in range(CONTACTS):
                status = "subscribed" if round_ % 2 == 0 else "unsubscribed"
                change(client, writer, f"p{n}@example.com", status)
        queued = {r.message_id.split("@", 1)[0] for r in deliveries(database)}
        assert len(queued) == CONTACTS * CHANGES_EACH

        first = start_worker(url, log)
        try:
            inbox.wait_for(3)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=15)
        before_kill = {d.webhook_id for d in inbox.received()}
        assert 0 < len(before_kill) < len(queued)

        second = start_worker(url, log)
        try:
            deadline = time.monotonic() + WAIT_S
            while sent(database) < len(queued):
                assert second.poll() is None, log.read_text()
                assert time.monotonic() < deadline, (sent(database), log.read_text())
                time.sleep(0.1)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, log.read_text()
        received = inbox.received()
        _check(received, queued, before_kill, endpoint["secret"], hooks)
    database.dispose()


def _check(
    received: list[Delivery],
    queued: set[str],
    before_kill: set[str],
    secret: str,
    hooks: Receiver,
) -> None:
    counts = Counter(d.webhook_id for d in received)
    assert set(counts) == queued  # every change, and nothing else
    # Those in flight when the worker died went again, under the same webhook-id.
    assert any(counts[webhook_id] >= 2 for webhook_id in before_kill)
    arrivals: defaultdict[str, list[int]] = defaultdict(list)
    for delivery in received:
        data = delivery.verified_by(secret)["data"]
        arrivals[data["contact_id"]].append(data["seq"])
    assert len(arrivals) == CONTACTS
    for seqs in arrivals.values():
        assert seqs == sorted(seqs), seqs  # a repeat may come again, never out of order
    assert hooks.port
