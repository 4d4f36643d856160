"""Owns the outbox worker: claim due messages, write and send them, then record every attempt
and, for each mail sent, its audit event, in one transaction. `prefcenter worker` runs it,
`prefcenter serve` runs one in a thread of its own; both stop gracefully (the message being
sent is finished, the rest of the claim given back).

Delivery is at least once: a worker killed between sending and recording leaves its claim,
which runs out after `outbox_lease_seconds`; another worker then sends the message again,
with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio

from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.service import append_event
from prefcenter.db import Database, utcnow
from prefcenter.delivery.mail import Outgoing, mail_sent_event, write_mail
from prefcenter.delivery.webhooks import WebhookSender
from prefcenter.mail.config import MailConfig, MaildirTarget, SmtpSecurity
from prefcenter.mail.transports import DeliveryFailed, Transport, open_transport
from prefcenter.outbox import service as outbox
from prefcenter.outbox.schemas import Attempted, AttemptOutcome, Claimed, OutboxKind
from prefcenter.settings import Settings

logger = logging.getLogger(__name__)

# Messages claimed at once: one transaction claims them, one records them all.
BATCH_SIZE = 50
# How long `BackgroundWorker.stop` waits for the message being sent.
STOP_TIMEOUT_S = 40.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


@dataclass(slots=True)
class DeliveryReport:
    """What one or more rounds of delivery did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0  # claimed, not tried (stopping), given back
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)  # the last few

    def add(self, other: DeliveryReport) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.released += other.released
        self.last_error = other.last_error or self.last_error
        self.errors = (self.errors + other.errors)[-5:]

    def summary(self) -> str:
        return (
            f"sent {self.sent}, to retry {self.retried}, failed {self.failed}, "
            f"cancelled {self.cancelled}, given back {self.released}"
        )


def transport_name(config: MailConfig) -> str:
    if isinstance(config.target, MaildirTarget):
        return "maildir"
    return "smtps" if config.target.security is SmtpSecurity.TLS else "smtp"


class OutboxWorker:
    """Delivers the outbox's due messages of the kinds it can send (mail, when it is on)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        mail: MailConfig | None,
        transport: Transport | None = None,
        clock: Callable[[], datetime] = utcnow,
        draw: Callable[[], float] = random.random,
        batch_size: int = BATCH_SIZE,
        name: str | None = None,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.mail = mail
        self.kinds = frozenset({OutboxKind.MAIL}) if mail is not None else frozenset()
        self.clock = clock
        self.draw = draw
        self.batch_size = batch_size
        self.name = name or worker_name()
        self.lease = timedelta(seconds=settings.outbox_lease_seconds)
        self._ring = settings.signing_key_ring()
        self._keys = AuditKeys.from_settings(settings)
        self._transport = transport
        # Webhook deliveries, in a loop of their own beside the mail's (run, deliver_due).
        self.webhooks = webhooks
        if webhooks is not None and not webhooks.name:
            webhooks.name = self.name

    def transport(self) -> Transport:
        if self._transport is None:
            assert self.mail is not None
            self._transport = open_transport(self.mail.target)
        return self._transport

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.close()
        if self.webhooks is not None:
            await self.webhooks.aclose()

    async def deliver_batch(
        self,
        *,
        stop: asyncio.Event | None = None,
        only: Collection[int] | None = None,
        final: bool = False,
    ) -> DeliveryReport:
        """One round: claim up to a batch of due messages, send them, record what happened.
        `only`: just these messages; `final`: a temporary error fails them, no retry."""
        report = DeliveryReport()
        if not self.kinds:
            return report
        now = self.clock()
        claim = secrets.token_hex(16)
        claimed = await anyio.to_thread.run_sync(self._claim, now, claim, only)
        if not claimed:
            return report
        report.claimed = len(claimed)
        assert self.mail is not None
        outgoing = await anyio.to_thread.run_sync(self._write, claimed, self.mail, now)
        attempts, untried = await self._send(outgoing, stop=stop, final=final, claimed_at=now)
        by_id = {item.claimed.id: item for item in outgoing}
        recorded = await anyio.to_thread.run_sync(
            self._record, attempts, untried, claim, by_id, self.mail
        )
        report.sent = len(recorded.marked_sent)
        report.retried = recorded.outcomes[AttemptOutcome.RETRY]
        report.failed = recorded.outcomes[AttemptOutcome.FAILED]
        report.cancelled = recorded.outcomes[AttemptOutcome.CANCELLED]
        report.released = len(untried)
        report.errors = [a.error for a in attempts if a.error][:5]
        report.last_error = report.errors[-1] if report.errors else None
        return report

    async def deliver_due(self, *, stop: asyncio.Event | None = None) -> DeliveryReport:
        """Rounds until nothing is due (or `stop` is set), mail first, then webhooks."""
        total = await self._deliver_mail_due(stop=stop)
        if self.webhooks is not None:
            hooks = await self.webhooks.deliver_due(stop=stop)
            total.add(
                DeliveryReport(
                    claimed=hooks.claimed,
                    sent=hooks.sent,
                    retried=hooks.retried,
                    failed=hooks.failed,
                    cancelled=hooks.cancelled,
                    released=hooks.released,
                    last_error=hooks.errors[-1] if hooks.errors else None,
                    errors=hooks.errors,
                )
            )
        return total

    async def _deliver_mail_due(self, *, stop: asyncio.Event | None) -> DeliveryReport:
        total = DeliveryReport()
        while stop is None or not stop.is_set():
            report = await self.deliver_batch(stop=stop)
            total.add(report)
            if report.claimed == 0 or report.released:
                break
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, looking again every `outbox_poll_seconds` when idle.
        A round that fails (the database away) is logged and tried again after the pause.
        Webhooks go in a loop of their own, so a slow receiver never holds up mail."""
        if self.webhooks is None:
            await self._run_mail(stop)
            return
        await asyncio.gather(self._run_mail(stop), self.webhooks.run(stop))

    async def _run_mail(self, stop: asyncio.Event) -> None:
        poll = self.settings.outbox_poll_seconds
        logger.info(
            "outbox worker %s started (%s)",
            self.name,
            f"mail via {transport_name(self.mail)}" if self.mail else "mail is off",
        )
        try:
            while not stop.is_set():
                try:
                    report = await self._deliver_mail_due(stop=stop)
                except Exception:  # one bad round must not end the worker
                    logger.exception("outbox round failed; trying again in %.1f s", poll)
                else:
                    if report.claimed:
                        logger.info("outbox: %s", report.summary())
                    if report.claimed and not stop.is_set():
                        continue  # more may have become due meanwhile
                    if self._transport is not None:
                        await self._transport.close()  # idle: no connection held open
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll)
        finally:
            if self._transport is not None:
                await self._transport.close()
            logger.info("outbox worker %s stopped", self.name)

    def _claim(self, now: datetime, claim: str, only: Collection[int] | None) -> list[Claimed]:
        if only is None:
            # A read first: an idle worker on SQLite takes no write lock.
            with self.database.transaction(write=False) as session:
                if not outbox.any_due(session, kinds=self.kinds, now=now):
                    return []
        with self.database.transaction(write=True) as session:
            return outbox.claim_due(
                session,
                kinds=self.kinds,
                now=now,
                limit=self.batch_size,
                claim=claim,
                lease=self.lease,
                only=only,
            )

    def _write(self, claimed: list[Claimed], mail: MailConfig, now: datetime) -> list[Outgoing]:
        with self.database.transaction(write=False, snapshot=True) as session:
            return write_mail(
                session, claimed, config=mail, settings=self.settings, ring=self._ring, now=now
            )

    async def _send(
        self,
        outgoing: list[Outgoing],
        *,
        stop: asyncio.Event | None,
        final: bool,
        claimed_at: datetime,
    ) -> tuple[list[Attempted], list[int]]:
        """Send each in turn. Stops early, giving the rest back untried, when asked to stop
        or when half the claim's time is gone (a slow relay must not outlast the claim)."""
        assert self.mail is not None
        attempts: list[Attempted] = []
        untried: list[int] = []
        deadline = claimed_at + self.lease / 2
        down: DeliveryFailed | None = None
        for item in outgoing:
            started = self.clock()
            if item.skip is not None:
                outcome = AttemptOutcome.CANCELLED if item.cancel else AttemptOutcome.FAILED
                attempts.append(Attempted(item.claimed, outcome, started, started, item.skip))
                continue
            if (stop is not None and stop.is_set()) or started >= deadline:
                untried.append(item.claimed.id)
                continue
            if down is not None:
                attempts.append(
                    Attempted(
                        item.claimed,
                        AttemptOutcome.FAILED if final else AttemptOutcome.RETRY,
                        started,
                        started,
                        f"not tried, the transport is down: {down.detail}",
                    )
                )
                continue
            assert item.message is not None
            assert item.recipient is not None
            try:
                await self.transport().send(
                    item.message, sender=self.mail.envelope_sender, recipient=item.recipient
                )
            except DeliveryFailed as exc:
                permanent = exc.permanent or final
                outcome = AttemptOutcome.FAILED if permanent else AttemptOutcome.RETRY
                attempts.append(Attempted(item.claimed, outcome, started, self.clock(), exc.detail))
                if exc.unreachable:
                    down = exc
                continue
            attempts.append(Attempted(item.claimed, AttemptOutcome.SENT, started, self.clock()))
        return attempts, untried

    def _record(
        self,
        attempts: list[Attempted],
        untried: list[int],
        claim: str,
        by_id: dict[int, Outgoing],
        mail: MailConfig,
    ) -> outbox.Recorded:
        with self.database.transaction(write=True) as session:
            recorded = outbox.record_attempts(
                session, attempts, claim=claim, worker=self.name, draw=self.draw
            )
            outbox.release(session, untried, claim=claim)
            for attempted in attempts:
                if attempted.message.id in recorded.marked_sent:
                    append_event(
                        session,
                        mail_sent_event(
                            by_id[attempted.message.id],
                            sent_at=attempted.finished_at,
                            transport=transport_name(mail),
                        ),
                    )
        return recorded


class BackgroundWorker:
    """An `OutboxWorker` in a thread with its own event loop, beside a server (`prefcenter
    serve`): started before it, stopped after it."""

    def __init__(self, worker: OutboxWorker) -> None:
        self.worker = worker
        self._thread = threading.Thread(target=self._main, name="outbox-worker", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self.worker.run(self._stop)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop claiming, finish the message being sent, give the rest back."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("outbox worker did not stop within %.0f s", timeout)


async def run_until_signalled(worker: OutboxWorker) -> None:
    """`prefcenter worker`: deliver until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)
