"""The outbox worker against a real SMTP server, on both engines: retries that back off on an
injected clock, refusals for good, a graceful stop, claims that run out and are taken over, and
workers that never share a message."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlmodel import col, select

from prefcenter.audit.models import AuditEvent
from prefcenter.db import Database
from prefcenter.delivery.reports import DeliveryReport
from prefcenter.delivery.test_mail import QueuedMail, queue_test_mail
from prefcenter.delivery.worker import SEND_CONNECTIONS, OutboxWorker
from prefcenter.mail.config import MailConfig, mail_config
from prefcenter.outbox import service as outbox
from prefcenter.outbox.models import OutboxAttempt, OutboxMessage
from prefcenter.outbox.rules import MAIL_RETRY_SCHEDULE
from prefcenter.outbox.schemas import Attempted, AttemptOutcome, OutboxKind
from prefcenter.settings import Settings
from tests.support.harness import make_settings
from tests.support.mail_server import SENDER, Clock, SmtpServer, free_port, smtp_server

MIDDLE = 0.5  # a draw that gives each delay exactly as the schedule says


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


def settings_at(database_url: str, port: int) -> Settings:
    return make_settings(
        database_url, mail_url=f"smtp://127.0.0.1:{port}?starttls=off", mail_from=SENDER
    )


def config_of(settings: Settings) -> MailConfig:
    config = mail_config(settings)
    assert config is not None
    return config


def queue(database: Database, settings: Settings, *recipients: str) -> list[QueuedMail]:
    with database.transaction(write=True) as session:
        return [
            queue_test_mail(session, config_of(settings), recipient=r, now=Clock().now)
            for r in recipients
        ]


def queue_at(database: Database, settings: Settings, clock: Clock, *recipients: str) -> None:
    with database.transaction(write=True) as session:
        for recipient in recipients:
            queue_test_mail(session, config_of(settings), recipient=recipient, now=clock.now)


def worker_for(database: Database, settings: Settings, clock: Clock | None = None) -> OutboxWorker:
    return OutboxWorker(
        database,
        settings,
        mail=config_of(settings),
        clock=clock or Clock(),
        draw=lambda: MIDDLE,
    )


def run_batch(worker: OutboxWorker, stop: asyncio.Event | None = None) -> DeliveryReport:
    async def go() -> DeliveryReport:
        try:
            return await worker.deliver_batch(stop=stop)
        finally:
            await worker.aclose()

    return asyncio.run(go())


def rows(database: Database) -> list[OutboxMessage]:
    with database.transaction(write=False) as session:
        return list(session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))


def attempts(database: Database) -> list[OutboxAttempt]:
    with database.transaction(write=False) as session:
        return list(
            session.exec(
                select(OutboxAttempt).order_by(col(OutboxAttempt.message), col(OutboxAttempt.id))
            )
        )


def sent_events(database: Database) -> int:
    with database.transaction(write=False) as session:
        return len(list(session.exec(select(AuditEvent).where(AuditEvent.kind == "mail_sent"))))


class TestRetries:
    def test_a_relay_that_is_down_at_first_gets_the_mail_on_the_schedule(
        self, database_url: str
    ) -> None:
        port = free_port()  # nothing listens yet
        settings = settings_at(database_url, port)
        database = Database(settings)
        clock = Clock()
        addresses = [f"p{n}@example.com" for n in range(4)]
        queue_at(database, settings, clock, *addresses)
        worker = worker_for(database, settings, clock)
        start = clock.now

        first = run_batch(worker)
        assert (first.sent, first.retried) == (0, 4)
        for row in rows(database):
            assert row.status == "queued"
            assert row.attempts == 1
            assert row.due_at == start + MAIL_RETRY_SCHEDULE[0]
            assert row.claimed_by is None
            assert row.last_error
        # One per connection was tried; the relay being down, the others wait without a try.
        errors = [r.last_error or "" for r in rows(database)]
        assert sum("not tried, the transport is down" in e for e in errors) == 4 - SEND_CONNECTIONS

        clock.advance(MAIL_RETRY_SCHEDULE[0] - timedelta(seconds=1))
        assert run_batch(worker).claimed == 0  # not due yet
        clock.advance(timedelta(seconds=1))
        second = run_batch(worker)
        assert second.retried == 4
        assert {r.due_at for r in rows(database)} == {clock.now + MAIL_RETRY_SCHEDULE[1]}

        with smtp_server(port=port) as server:
            clock.advance(MAIL_RETRY_SCHEDULE[1] - timedelta(seconds=1))
            assert run_batch(worker).claimed == 0
            clock.advance(timedelta(seconds=1))
            third = run_batch(worker)
            assert third.sent == 4
            received = server.inbox.wait_for(4)

        assert {m.message_id for m in received} == {r.message_id for r in rows(database)}
        assert [r.status for r in rows(database)] == ["sent"] * 4
        assert [r.attempts for r in rows(database)] == [3] * 4
        kept = attempts(database)
        assert [a.outcome for a in kept] == ["retry", "retry", "sent"] * 4
        assert all(a.error for a in kept if a.outcome == "retry")
        assert all(a.error is None for a in kept if a.outcome == "sent")
        assert sent_events(database) == 4
        database.dispose()

    def test_after_the_last_retry_the_mail_is_given_up(self, database_url: str) -> None:
        settings = settings_at(database_url, free_port())
        database = Database(settings)
        clock = Clock()
        queue_at(database, settings, clock, "a@example.com")
        worker = worker_for(database, settings, clock)
        for delay in MAIL_RETRY_SCHEDULE:
            assert run_batch(worker).retried == 1
            clock.advance(delay)
        last = run_batch(worker)
        assert last.failed == 1
        (row,) = rows(database)
        assert row.status == "failed"
        assert row.attempts == len(MAIL_RETRY_SCHEDULE) + 1
        assert row.finished_at == clock.now
        clock.advance(timedelta(days=30))
        assert run_batch(worker).claimed == 0
        database.dispose()

    def test_a_refusal_for_good_fails_at_once_and_keeps_no_address(
        self, database_url: str, server: SmtpServer
    ) -> None:
        server.inbox.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
        server.inbox.refuse["grey@example.com"] = "450 4.2.0 <grey@example.com>: greylisted"
        settings = settings_at(database_url, server.port)
        database = Database(settings)
        queue(database, settings, "gone@example.com", "grey@example.com", "ok@example.com")

        report = run_batch(worker_for(database, settings))

        assert (report.sent, report.failed, report.retried) == (1, 1, 1)
        gone, grey, ok = rows(database)
        assert gone.status == "failed"
        assert grey.status == "queued"  # a 4xx is tried again
        assert ok.status == "sent"  # one recipient's refusal does not hold up the others
        for row in (gone, grey):
            assert row.last_error is not None
            assert "<recipient>" in row.last_error
            assert "@example.com" not in row.last_error
        assert "550" in (gone.last_error or "")
        assert [m.rcpt_tos for m in server.inbox.mails()] == [("ok@example.com",)]
        assert sent_events(database) == 1
        database.dispose()


class TestClaims:
    def test_a_worker_asked_to_stop_gives_its_claim_back(
        self, database_url: str, server: SmtpServer
    ) -> None:
        settings = settings_at(database_url, server.port)
        database = Database(settings)
        queue(database, settings, "a@example.com", "b@example.com")
        stop = asyncio.Event()
        stop.set()

        stopped = run_batch(worker_for(database, settings), stop)

        assert (stopped.claimed, stopped.released, stopped.sent) == (2, 2, 0)
        assert [(r.status, r.claimed_by, r.attempts) for r in rows(database)] == [
            ("queued", None, 0)
        ] * 2
        assert run_batch(worker_for(database, settings)).sent == 2
        database.dispose()

    def test_a_dead_workers_claim_is_taken_over_once_it_runs_out(
        self, database_url: str, server: SmtpServer
    ) -> None:
        settings = settings_at(database_url, server.port)
        database = Database(settings)
        clock = Clock()
        queue_at(database, settings, clock, "a@example.com")
        lease = timedelta(seconds=settings.outbox_lease_seconds)
        with database.transaction(write=True) as session:
            (dead,) = outbox.claim_due(
                session,
                kinds={OutboxKind.MAIL},
                now=clock.now,
                limit=10,
                claim="dead-worker",
                lease=lease,
            )
        worker = worker_for(database, settings, clock)
        clock.advance(lease - timedelta(seconds=1))
        assert run_batch(worker).claimed == 0
        clock.advance(timedelta(seconds=1))
        assert run_batch(worker).sent == 1

        # The first worker comes back and records its own send: counted once.
        with database.transaction(write=True) as session:
            late = outbox.record_attempts(
                session,
                [Attempted(dead, AttemptOutcome.SENT, clock.now, clock.now)],
                claim="dead-worker",
                worker="dead",
            )
        assert late.marked_sent == set()
        assert sent_events(database) == 1
        (row,) = rows(database)
        assert row.status == "sent"
        assert len(server.inbox.mails()) == 1
        database.dispose()

    def test_workers_claiming_at_once_never_share_a_message(
        self, database_url: str, database: Database
    ) -> None:
        settings = settings_at(database_url, free_port())
        queue(database, settings, *(f"p{n}@example.com" for n in range(120)))
        clock = Clock()
        taken: list[list[int]] = [[] for _ in range(4)]
        barrier = threading.Barrier(4)

        def claimer(index: int) -> None:
            barrier.wait()
            while True:
                with database.transaction(write=True) as session:
                    batch = outbox.claim_due(
                        session,
                        kinds={OutboxKind.MAIL},
                        now=clock.now,
                        limit=7,
                        claim=f"worker-{index}",
                        lease=timedelta(minutes=5),
                    )
                if not batch:
                    return
                taken[index].extend(m.id for m in batch)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        every = [message for claimed in taken for message in claimed]
        assert len(every) == 120
        assert len(set(every)) == 120
        with database.transaction(write=False) as session:
            owners = {m.id: m.claimed_by for m in session.exec(select(OutboxMessage))}
        for index, claimed in enumerate(taken):
            assert all(owners[m] == f"worker-{index}" for m in claimed)
