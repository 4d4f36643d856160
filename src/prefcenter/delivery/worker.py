"""Owns the outbox worker: claim due messages, write and send them, then record every attempt
and, for each mail sent, its audit event, in one transaction. `prefcenter worker` runs it,
`prefcenter serve` runs one in a thread of its own (delivery.running).

Delivery is at least once: a worker killed between sending and recording leaves its claim,
which runs out after `outbox_lease_seconds`; another worker then sends the message again,
with the same Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio

from prefcenter import metrics
from prefcenter.audit.keys import AuditKeys
from prefcenter.audit.service import append_event
from prefcenter.db import Database, utcnow
from prefcenter.delivery.mail import Outgoing, mail_sent_event, write_mail
from prefcenter.delivery.reports import DeliveryReport, transport_name, worker_name
from prefcenter.delivery.webhooks import WebhookSender
from prefcenter.mail.config import MailConfig
from prefcenter.mail.transports import DeliveryFailed, Transport, open_transport
from prefcenter.outbox import service as outbox
from prefcenter.outbox.schemas import Attempted, AttemptOutcome, Claimed, OutboxKind
from prefcenter.settings import Settings

logger = logging.getLogger(__name__)

# Messages claimed at once: one transaction claims them, one records them all.
BATCH_SIZE = 50
# Connections a worker sends over at once: while one waits for the relay's answer, another
# sends (SMTP has no pipelining here).
SEND_CONNECTIONS = 2


@dataclass(frozen=True, slots=True)
class _Batch:
    """Messages claimed together, written and ready to send."""

    claim: str
    claimed_at: datetime
    outgoing: list[Outgoing]


def _set(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()


@dataclass(slots=True)
class _Round:
    """One round's sending, shared by its connections."""

    deadline: datetime
    stop: asyncio.Event | None
    final: bool
    attempts: list[Attempted] = field(default_factory=list)
    untried: list[int] = field(default_factory=list)
    down: DeliveryFailed | None = None  # the transport is unreachable: the rest wait


class OutboxWorker:
    """Delivers the outbox's due messages of the kinds it can send (mail, when it is on)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        mail: MailConfig | None,
        connections: int = SEND_CONNECTIONS,
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
        self._transports: list[Transport | None] = [None] * connections
        # Webhook deliveries, in a loop of their own beside the mail's (run, deliver_due).
        self.webhooks = webhooks
        if webhooks is not None and not webhooks.name:
            webhooks.name = self.name

    def _transport(self, index: int) -> Transport:
        transport = self._transports[index]
        if transport is None:
            assert self.mail is not None
            transport = self._transports[index] = open_transport(self.mail.target)
        return transport

    async def aclose(self) -> None:
        """Close the transports' connections (opened again when there is mail), and the
        webhook sender's."""
        await self._close_mail()
        if self.webhooks is not None:
            await self.webhooks.aclose()

    async def _close_mail(self) -> None:
        for transport in self._transports:
            if transport is not None:
                await transport.close()

    async def deliver_batch(
        self,
        *,
        stop: asyncio.Event | None = None,
        only: Collection[int] | None = None,
        final: bool = False,
    ) -> DeliveryReport:
        """One round: claim up to a batch of due messages, send them, record what happened.
        `only`: just these messages; `final`: a temporary error fails them, no retry."""
        if not self.kinds:
            return DeliveryReport()
        batch = await self._prepare(only)
        if batch is None:
            return DeliveryReport()
        attempts, untried = await self._send(batch, stop=stop, final=final)
        return await self._finish(batch, attempts, untried)

    async def deliver_due(self, *, stop: asyncio.Event | None = None) -> DeliveryReport:
        """Rounds until nothing is due (or `stop` is set): mail, then webhooks."""
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
        """Mail rounds until nothing is due (or `stop` is set), overlapped: the next batch is
        claimed and written, and the last one recorded, while this one is being sent."""
        total = DeliveryReport()
        if not self.kinds:
            return total
        recording: asyncio.Task[DeliveryReport] | None = None
        following: asyncio.Task[_Batch | None] | None = None
        try:
            batch = await self._prepare(None)
            while batch is not None:
                following = None if _set(stop) else asyncio.create_task(self._prepare(None))
                attempts, untried = await self._send(batch, stop=stop, final=False)
                if recording is not None:
                    total.add(await recording)
                recording = asyncio.create_task(self._finish(batch, attempts, untried))
                batch = await following if following is not None else None
                following = None
                if batch is not None and (_set(stop) or untried):
                    # Stopping (or out of time): what was claimed meanwhile goes back.
                    total.add(await self._finish(batch, [], [o.claimed.id for o in batch.outgoing]))
                    batch = None
        finally:
            if following is not None:
                following.cancel()  # its claim, if it made one, runs out by itself
            if recording is not None:
                total.add(await recording)
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
                    await self._close_mail()  # idle: no connection held open
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll)
        finally:
            await self._close_mail()
            logger.info("outbox worker %s stopped", self.name)

    async def _prepare(self, only: Collection[int] | None) -> _Batch | None:
        """Claim a batch and write its mail (in worker threads); None when nothing is due."""
        now = self.clock()
        claim = secrets.token_hex(16)
        claimed = await anyio.to_thread.run_sync(self._claim, now, claim, only)
        if not claimed:
            return None
        assert self.mail is not None
        outgoing = await anyio.to_thread.run_sync(self._write, claimed, self.mail, now)
        return _Batch(claim=claim, claimed_at=now, outgoing=outgoing)

    async def _finish(
        self, batch: _Batch, attempts: list[Attempted], untried: list[int]
    ) -> DeliveryReport:
        assert self.mail is not None
        recorded = await anyio.to_thread.run_sync(self._record, attempts, untried, batch, self.mail)
        errors = [a.error for a in attempts if a.error][:5]
        report = DeliveryReport(
            claimed=len(batch.outgoing),
            sent=len(recorded.marked_sent),
            retried=recorded.outcomes[AttemptOutcome.RETRY],
            failed=recorded.outcomes[AttemptOutcome.FAILED],
            cancelled=recorded.outcomes[AttemptOutcome.CANCELLED],
            released=len(untried),
            last_error=errors[-1] if errors else None,
            errors=errors,
        )
        metrics.count_outbox_round(
            OutboxKind.MAIL.value,
            sent=report.sent,
            retried=report.retried,
            failed=report.failed,
            cancelled=report.cancelled,
            released=report.released,
        )
        return report

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
        self, batch: _Batch, *, stop: asyncio.Event | None, final: bool
    ) -> tuple[list[Attempted], list[int]]:
        """Send them over `connections` connections at once, each in turn on its own. Stops
        early, giving the rest back untried, when asked to stop or when half the claim's time
        is gone (a slow relay must not outlast the claim)."""
        state = _Round(deadline=batch.claimed_at + self.lease / 2, stop=stop, final=final)
        outgoing = batch.outgoing
        shares = [outgoing[i :: len(self._transports)] for i in range(len(self._transports))]
        await asyncio.gather(
            *(self._send_share(share, index, state) for index, share in enumerate(shares) if share)
        )
        return state.attempts, state.untried

    async def _send_share(self, share: list[Outgoing], index: int, state: _Round) -> None:
        assert self.mail is not None
        for item in share:
            started = self.clock()
            if item.skip is not None:
                outcome = AttemptOutcome.CANCELLED if item.cancel else AttemptOutcome.FAILED
                state.attempts.append(Attempted(item.claimed, outcome, started, started, item.skip))
                continue
            if _set(state.stop) or started >= state.deadline:
                state.untried.append(item.claimed.id)
                continue
            if state.down is not None:
                state.attempts.append(
                    Attempted(
                        item.claimed,
                        AttemptOutcome.FAILED if state.final else AttemptOutcome.RETRY,
                        started,
                        started,
                        f"not tried, the transport is down: {state.down.detail}",
                    )
                )
                continue
            assert item.message is not None
            assert item.envelope_recipient is not None
            try:
                await self._transport(index).send(
                    item.message,
                    sender=self.mail.envelope_sender,
                    recipient=item.envelope_recipient,
                )
            except DeliveryFailed as exc:
                permanent = exc.permanent or state.final
                outcome = AttemptOutcome.FAILED if permanent else AttemptOutcome.RETRY
                state.attempts.append(
                    Attempted(item.claimed, outcome, started, self.clock(), exc.detail)
                )
                if exc.unreachable:
                    state.down = exc
                continue
            state.attempts.append(
                Attempted(item.claimed, AttemptOutcome.SENT, started, self.clock())
            )

    def _record(
        self, attempts: list[Attempted], untried: list[int], batch: _Batch, mail: MailConfig
    ) -> outbox.Recorded:
        by_id = {item.claimed.id: item for item in batch.outgoing}
        with self.database.transaction(write=True) as session:
            recorded = outbox.record_attempts(
                session, attempts, claim=batch.claim, worker=self.name, draw=self.draw
            )
            outbox.release(session, untried, claim=batch.claim)
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
