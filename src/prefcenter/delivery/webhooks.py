"""Owns sending webhook deliveries (Standard Webhooks v1): claim due deliveries,
build each body from its audit event (delivery.webhook_outgoing), sign it with every secret
that signs, POST them concurrently through a transport that connects only to addresses it has
checked (delivery.checked_transport), and record every attempt, what it did to its endpoint
(410 or five days of failures disable it), in one transaction. The outbox worker
(delivery.worker) runs it beside the mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio

from prefcenter import metrics
from prefcenter.db import Database, utcnow
from prefcenter.delivery.checked_transport import CheckedConnections
from prefcenter.delivery.webhook_outgoing import Outgoing, prepare_outgoing
from prefcenter.delivery.webhook_post import post_delivery
from prefcenter.delivery.webhook_records import Sent, record_batch
from prefcenter.outbox import service as outbox
from prefcenter.outbox.schemas import Attempted, AttemptOutcome, Claimed, OutboxKind
from prefcenter.settings import Settings
from prefcenter.webhooks.addresses import Resolve, system_resolve

logger = logging.getLogger(__name__)

# Deliveries claimed at once, and sent at once at most (across endpoints, each over a
# connection of its own).
BATCH_SIZE = 200
CONCURRENCY = 32


# --- one batch ------------------------------------------------------------------------------


@dataclass(slots=True)
class BatchReport:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    disabled: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class WebhookSender:
    """Delivers the outbox's due webhook deliveries."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        wall: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        resolve: Resolve = system_resolve,
        batch_size: int = BATCH_SIZE,
        concurrency: int = CONCURRENCY,
        name: str = "",
    ) -> None:
        self.database = database
        self.settings = settings
        # Schedules the retries (injected in tests); `wall` stamps `webhook-timestamp`, which
        # receivers check against their own clock.
        self.clock = clock
        self.wall = wall
        self.draw = draw
        self.resolve = resolve
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.name = name
        self.lease = timedelta(seconds=settings.outbox_lease_seconds)
        # No cookie jar carried from one receiver to the next, no redirects, no proxies.
        self._connections: CheckedConnections | None = None

    def connections(self) -> CheckedConnections:
        if self._connections is None:
            self._connections = CheckedConnections(
                resolve=self.resolve, allow_private=self.settings.webhooks_allow_private
            )
        return self._connections

    async def aclose(self) -> None:
        connections, self._connections = self._connections, None
        if connections is not None:
            await connections.aclose()

    async def deliver_batch(self, *, stop: asyncio.Event | None = None) -> BatchReport:
        """One round: claim up to a batch of due deliveries, send them, record the attempts."""
        batch = await self._next()
        if batch is None:
            return BatchReport()
        sent, untried = await self._send_all(batch.outgoing, stop=stop, claimed_at=batch.at)
        return await self._finish(batch, sent, untried)

    async def deliver_due(self, *, stop: asyncio.Event | None = None) -> BatchReport:
        """Rounds until nothing is due (or `stop` is set)."""
        total = BatchReport()
        while not _set(stop):
            report = await self._overlapped(stop)
            _add(total, report)
            if report.claimed == 0 or report.released:
                break
        return total

    async def _overlapped(self, stop: asyncio.Event | None) -> BatchReport:
        """Rounds overlapped: the next batch is claimed and read, and the last one recorded,
        while this one is being sent, until a claim finds nothing. (A contact's next delivery
        is not in the next batch: the one being sent is still queued when that is claimed;
        `deliver_due` comes back for it.)"""
        total = BatchReport()
        recording: asyncio.Task[BatchReport] | None = None
        following: asyncio.Task[_Batch | None] | None = None
        try:
            batch = await self._next()
            while batch is not None:
                following = None if _set(stop) else asyncio.create_task(self._next())
                sent, untried = await self._send_all(batch.outgoing, stop=stop, claimed_at=batch.at)
                if recording is not None:
                    _add(total, await recording)
                recording = asyncio.create_task(self._finish(batch, sent, untried))
                batch = await following if following is not None else None
                following = None
                if batch is not None and (_set(stop) or untried):
                    # Stopping (or out of time): what was claimed meanwhile goes back.
                    untouched = [o.claimed.id for o in batch.outgoing]
                    _add(total, await self._finish(batch, [], untouched))
                    batch = None
        finally:
            if following is not None:
                following.cancel()  # its claim, if it made one, runs out by itself
            if recording is not None:
                _add(total, await recording)
        return total

    async def _next(self) -> _Batch | None:
        now = self.clock()
        claim = secrets.token_hex(16)
        claimed = await anyio.to_thread.run_sync(self._claim, now, claim)
        if not claimed:
            return None
        outgoing = await anyio.to_thread.run_sync(
            prepare_outgoing, self.database, self.settings, claimed, now
        )
        return _Batch(claim=claim, at=now, outgoing=outgoing)

    async def _finish(self, batch: _Batch, sent: list[Sent], untried: list[int]) -> BatchReport:
        recorded, disabled = await anyio.to_thread.run_sync(
            functools.partial(
                record_batch,
                self.database,
                sent,
                untried,
                claim=batch.claim,
                now=self.clock(),
                worker=self.name,
                draw=self.draw,
            )
        )
        report = BatchReport(
            claimed=len(batch.outgoing),
            sent=len(recorded.marked_sent),
            retried=recorded.outcomes[AttemptOutcome.RETRY],
            failed=recorded.outcomes[AttemptOutcome.FAILED],
            cancelled=recorded.outcomes[AttemptOutcome.CANCELLED],
            released=len(untried),
            disabled=disabled,
            errors=[s.attempted.error for s in sent if s.attempted.error][:5],
        )
        metrics.count_outbox_round(
            OutboxKind.WEBHOOK.value,
            sent=report.sent,
            retried=report.retried,
            failed=report.failed,
            cancelled=report.cancelled,
            released=report.released,
        )
        return report

    def _claim(self, now: datetime, claim: str) -> list[Claimed]:
        kinds = (OutboxKind.WEBHOOK,)
        with self.database.transaction(write=False) as session:
            if not outbox.any_due(session, kinds=kinds, now=now):
                return []
        with self.database.transaction(write=True) as session:
            return outbox.claim_due(
                session,
                kinds=kinds,
                now=now,
                limit=self.batch_size,
                claim=claim,
                lease=self.lease,
            )

    async def _send_all(
        self, outgoing: list[Outgoing], *, stop: asyncio.Event | None, claimed_at: datetime
    ) -> tuple[list[Sent], list[int]]:
        """Send concurrently, `concurrency` at most at once (a batch holds one delivery per
        contact and endpoint at most: the claim keeps their order). Once an endpoint cannot
        be reached, its deliveries that have not started are retried later without a try;
        after a stop or half the claim's time, those not started are given back untried."""
        connections = self.connections()
        connections.prune()
        down: dict[int, str] = {}
        deadline = claimed_at + self.lease / 2
        sent: list[Sent] = []
        untried: list[int] = []
        queue = iter(outgoing)

        async def sender() -> None:
            for item in queue:
                started = self.clock()
                endpoint_id = item.claimed.endpoint_id
                if item.skip is not None:
                    attempted = Attempted(
                        item.claimed, item.skip_outcome, started, started, item.skip
                    )
                    sent.append(Sent(attempted, endpoint_id))
                    continue
                if (stop is not None and stop.is_set()) or started >= deadline:
                    untried.append(item.claimed.id)
                    continue
                assert endpoint_id is not None
                if endpoint_id in down:
                    error = f"not tried, the endpoint is unreachable: {down[endpoint_id]}"
                    sent.append(
                        Sent(Attempted(item.claimed, _RETRY, started, started, error), None)
                    )
                    continue
                result = await post_delivery(
                    item, connections, started=started, clock=self.clock, wall=self.wall
                )
                if result.unreachable is not None:
                    down[endpoint_id] = result.unreachable
                sent.append(result.sent)

        async with anyio.create_task_group() as group:
            for _ in range(min(self.concurrency, len(outgoing))):
                group.start_soon(sender)
        return sent, untried

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, looking again every `outbox_poll_seconds` when idle.
        A round that fails (the database away) is logged and tried again after the pause."""
        poll = self.settings.outbox_poll_seconds
        try:
            while not stop.is_set():
                try:
                    report = await self.deliver_due(stop=stop)
                except Exception:  # one bad round must not end the worker
                    logger.exception("webhook round failed; trying again in %.1f s", poll)
                else:
                    if report.claimed and not report.released:
                        continue  # more may have become due meanwhile
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=poll)
        finally:
            await self.aclose()


@dataclass(frozen=True, slots=True)
class _Batch:
    claim: str
    at: datetime  # when it was claimed
    outgoing: list[Outgoing]


def _set(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()


_RETRY = AttemptOutcome.RETRY


def _add(total: BatchReport, report: BatchReport) -> None:
    total.claimed += report.claimed
    total.sent += report.sent
    total.retried += report.retried
    total.failed += report.failed
    total.cancelled += report.cancelled
    total.released += report.released
    total.disabled += report.disabled
    total.errors = (total.errors + report.errors)[-5:]
