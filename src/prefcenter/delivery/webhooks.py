"""Owns sending webhook deliveries (Standard Webhooks v1) with httpx: claim due deliveries,
build each body from its audit event, sign it with every secret that signs, POST them
concurrently through a transport that connects only to addresses it has checked, and record
every attempt, what it did to its endpoint (410 or five days of failures disable it), in one
transaction. The outbox worker (delivery.worker) runs it beside the mail.

SSRF: the endpoint's host is resolved when a connection is opened, every address checked
(webhooks.rules.address_refusal), and the connection made to the address that was checked,
never to the result of a second lookup; TLS still verifies the certificate against the host
name. Redirects are not followed; proxies from the environment are not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpcore
import httpx
import orjson
from sqlalchemy import select as core_select
from sqlalchemy import update
from sqlmodel import Session, col, select

from prefcenter.audit.canonical import format_time
from prefcenter.audit.models import AuditEvent
from prefcenter.db import Database, utcnow
from prefcenter.outbox import service as outbox
from prefcenter.outbox.schemas import Attempted, AttemptOutcome, Claimed, OutboxKind
from prefcenter.settings import Settings
from prefcenter.webhooks.addresses import AddressRefused, Resolve, checked_addresses, system_resolve
from prefcenter.webhooks.models import WebhookEndpoint
from prefcenter.webhooks.rules import Answer, answer_of, failing_too_long, retry_after
from prefcenter.webhooks.rules import signature_header as sign
from prefcenter.webhooks.secret_box import SecretUnreadable
from prefcenter.webhooks.service import Actor, disable_endpoint, signing_keys, webhook_id_of_row

logger = logging.getLogger(__name__)

# Deliveries claimed at once, and sent at once at most (across endpoints), over lanes of
# LANE_CONNECTIONS connections each: httpcore's pool looks at each of its connections for
# every request, so a few small pools cost less than one large one.
BATCH_SIZE = 200
CONCURRENCY = 32
LANE_CONNECTIONS = 4
# The whole of one attempt: resolving, connecting, sending, the answer's head.
TIMEOUT_S = 15.0
# What is kept of a receiver's answer in the attempt's error.
ANSWER_CHARS = 200
# An answer's body is read up to this much (then the connection is dropped, not read on).
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "prefcenter-webhooks/1"
SENDER = Actor(name="prefcenter:outbox", channel="webhooks")

_EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_DATA_COLUMNS = (
    "id",
    "seq",
    "kind",
    "contact_id",
    "topic",
    "from_status",
    "to_status",
    "outcome",
    "occurred_at",
    "recorded_at",
    "actor",
    "source",
    "campaign_id",
    "reason",
)


# --- the transport: connect only where it was checked --------------------------------------


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, but each TCP connection goes to an address of the host that
    was resolved and checked just now (webhooks.addresses.checked_addresses)."""

    def __init__(self, *, resolve: Resolve, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolve = resolve
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(
            functools.partial(
                checked_addresses,
                host,
                port,
                resolve=self._resolve,
                allow_private=self._allow_private,
            )
        )
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
            else:
                return _KeptStream(stream)
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered to a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _KeptStream(httpcore.AsyncNetworkStream):
    """httpcore's stream, with its socket looked up once: httpcore asks for it before every
    request on a kept connection (is it still open?), and anyio builds all of a stream's
    attributes to answer (a tenth of a delivery's time)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _KeptStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            if self._socket is None:
                self._socket = self._inner.get_extra_info("socket")
            return self._socket
        return self._inner.get_extra_info(info)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (request and answer, errors, streams) over a pool whose connections
    `CheckedBackend` opens."""

    def __init__(self, *, resolve: Resolve, allow_private: bool, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(resolve=resolve, allow_private=allow_private),
        )


def checked_transport(*, resolve: Resolve, allow_private: bool) -> CheckedTransport:
    limits = httpx.Limits(
        max_connections=LANE_CONNECTIONS,
        max_keepalive_connections=LANE_CONNECTIONS,
        keepalive_expiry=5,
    )
    return CheckedTransport(resolve=resolve, allow_private=allow_private, limits=limits)


# --- one batch ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed delivery, signed-ready; or why it will not be sent (`skip`)."""

    claimed: Claimed
    webhook_id: str
    url: str = ""
    keys: tuple[bytes, ...] = ()
    body: bytes = b""
    skip: str | None = None
    skip_outcome: AttemptOutcome = AttemptOutcome.FAILED


@dataclass(slots=True)
class Sent:
    attempted: Attempted
    endpoint_id: int | None
    gone: bool = False  # answered 410
    reached: bool = False  # a 2xx


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
        self.timeout = httpx.Timeout(TIMEOUT_S)
        # httpx's transport without its client: no cookie jar carried from one receiver to
        # the next, no redirects, no proxies from the environment, less work per request.
        self._lanes: list[CheckedTransport] = []

    def lanes(self) -> list[CheckedTransport]:
        if not self._lanes:
            self._lanes = [
                checked_transport(
                    resolve=self.resolve, allow_private=self.settings.webhooks_allow_private
                )
                for _ in range(max(1, -(-self.concurrency // LANE_CONNECTIONS)))
            ]
        return self._lanes

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            await lane.aclose()

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
        outgoing = await anyio.to_thread.run_sync(self._prepare, claimed, now)
        return _Batch(claim=claim, at=now, outgoing=outgoing)

    async def _finish(self, batch: _Batch, sent: list[Sent], untried: list[int]) -> BatchReport:
        recorded, disabled = await anyio.to_thread.run_sync(
            self._record, sent, untried, batch.claim
        )
        return BatchReport(
            claimed=len(batch.outgoing),
            sent=len(recorded.marked_sent),
            retried=recorded.outcomes[AttemptOutcome.RETRY],
            failed=recorded.outcomes[AttemptOutcome.FAILED],
            cancelled=recorded.outcomes[AttemptOutcome.CANCELLED],
            released=len(untried),
            disabled=disabled,
            errors=[s.attempted.error for s in sent if s.attempted.error][:5],
        )

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

    def _prepare(self, claimed: list[Claimed], now: datetime) -> list[Outgoing]:
        """Each delivery's URL, keys and body: two queries for the whole batch."""
        with self.database.transaction(write=False, snapshot=True) as session:
            endpoint_ids = {c.endpoint_id for c in claimed if c.endpoint_id is not None}
            endpoints = {
                row.id: row
                for row in session.exec(
                    select(WebhookEndpoint).where(col(WebhookEndpoint.id).in_(endpoint_ids))
                )
            }
            event_ids = {c.cause_event_id for c in claimed if c.cause_event_id is not None}
            events = _event_data(session, event_ids)
        keys: dict[int, tuple[bytes, ...] | str] = {}
        written: list[Outgoing] = []
        for item in claimed:
            webhook_id = webhook_id_of_row(item.message_id, item.payload, item.cause_event_id)
            endpoint = endpoints.get(item.endpoint_id) if item.endpoint_id is not None else None
            if endpoint is None or endpoint.id is None:
                written.append(
                    Outgoing(item, webhook_id, skip="the endpoint is gone", skip_outcome=_CANCEL)
                )
                continue
            if not endpoint.enabled:
                written.append(Outgoing(item, webhook_id, skip="the endpoint is disabled"))
                continue
            if endpoint.id not in keys:
                try:
                    keys[endpoint.id] = tuple(signing_keys(self.settings, endpoint, now=now))
                except (SecretUnreadable, ValueError) as exc:
                    keys[endpoint.id] = f"its secret cannot be read with this audit key ({exc})"
            endpoint_keys = keys[endpoint.id]
            if isinstance(endpoint_keys, str):
                written.append(Outgoing(item, webhook_id, skip=endpoint_keys, skip_outcome=_RETRY))
                continue
            body = _body(item, events)
            if body is None:
                written.append(Outgoing(item, webhook_id, skip="its audit event is missing"))
                continue
            written.append(
                Outgoing(item, webhook_id, url=endpoint.url, keys=endpoint_keys, body=body)
            )
        return written

    async def _send_all(
        self, outgoing: list[Outgoing], *, stop: asyncio.Event | None, claimed_at: datetime
    ) -> tuple[list[Sent], list[int]]:
        """Send concurrently: each lane (a pool of its own) sends at most LANE_CONNECTIONS at
        once. Once an endpoint cannot be reached, its deliveries that have not started are
        retried later without a try; after a stop or half the claim's time, those not started
        are given back untried."""
        lanes = self.lanes()
        gates = [asyncio.Semaphore(LANE_CONNECTIONS) for _ in lanes]
        down: dict[int, str] = {}
        deadline = claimed_at + self.lease / 2
        sent: list[Sent] = []
        untried: list[int] = []

        async def one(item: Outgoing, lane: int) -> None:
            started = self.clock()
            endpoint_id = item.claimed.endpoint_id
            if item.skip is not None:
                attempted = Attempted(item.claimed, item.skip_outcome, started, started, item.skip)
                sent.append(Sent(attempted, endpoint_id))
                return
            async with gates[lane]:
                started = self.clock()
                if (stop is not None and stop.is_set()) or started >= deadline:
                    untried.append(item.claimed.id)
                    return
                assert endpoint_id is not None
                if endpoint_id in down:
                    error = f"not tried, the endpoint is unreachable: {down[endpoint_id]}"
                    sent.append(
                        Sent(Attempted(item.claimed, _RETRY, started, started, error), None)
                    )
                    return
                result = await self._send(item, started, lanes[lane])
                if result.unreachable is not None:
                    down[endpoint_id] = result.unreachable
                sent.append(result.sent)

        async with anyio.create_task_group() as group:
            for number, item in enumerate(outgoing):
                group.start_soon(one, item, number % len(lanes))
        return sent, untried

    async def _send(self, item: Outgoing, started: datetime, lane: CheckedTransport) -> _Result:
        endpoint_id = item.claimed.endpoint_id
        timestamp = int(self.wall())
        headers = {
            "user-agent": USER_AGENT,
            "content-type": "application/json",
            "webhook-id": item.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(list(item.keys), item.webhook_id, timestamp, item.body),
        }
        unreachable: str | None = None
        try:
            async with asyncio.timeout(TIMEOUT_S):
                request = httpx.Request(
                    "POST",
                    item.url,
                    content=item.body,
                    headers=headers,
                    extensions={"timeout": self.timeout.as_dict()},
                )
                response = await lane.handle_async_request(request)
                try:
                    head = await _read_some(response)
                finally:
                    await response.aclose()
        except AddressRefused as exc:
            error = f"refused: {exc}"
            unreachable = error
        except TimeoutError:
            error = f"no answer within {TIMEOUT_S:.0f} s"
            unreachable = error
        except httpx.TimeoutException:
            error = f"no answer within {TIMEOUT_S:.0f} s"
            unreachable = error
        except (httpx.ConnectError, OSError) as exc:
            error = f"cannot connect: {exc or type(exc).__name__}"
            unreachable = error
        except (httpx.HTTPError, httpcore.ProtocolError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            logger.warning("webhook %s: unexpected error", item.webhook_id, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
        else:
            finished = self.clock()
            answer = answer_of(response.status_code)
            if answer is Answer.DELIVERED:
                return _Result(
                    Sent(
                        Attempted(item.claimed, AttemptOutcome.SENT, started, finished),
                        endpoint_id,
                        reached=True,
                    )
                )
            error = _answer_error(response, head)
            if answer is Answer.GONE:
                return _Result(
                    Sent(
                        Attempted(item.claimed, AttemptOutcome.FAILED, started, finished, error),
                        endpoint_id,
                        gone=True,
                    )
                )
            not_before = retry_after(
                response.status_code, response.headers.get("retry-after"), now=finished
            )
            return _Result(
                Sent(
                    Attempted(
                        item.claimed, _RETRY, started, finished, error, not_before=not_before
                    ),
                    endpoint_id,
                )
            )
        return _Result(
            Sent(Attempted(item.claimed, _RETRY, started, self.clock(), error), endpoint_id),
            unreachable=unreachable,
        )

    def _record(
        self, sent: list[Sent], untried: list[int], claim: str
    ) -> tuple[outbox.Recorded, list[str]]:
        """Every attempt, and what the batch says of each endpoint: one that answered is not
        failing; one whose every attempt failed is failing since the first (disabled after
        five days); one that answered 410 is disabled."""
        reached = {s.endpoint_id for s in sent if s.reached and s.endpoint_id is not None}
        failed: dict[int, datetime] = {}
        for s in sent:
            if s.endpoint_id is None or s.reached or s.endpoint_id in reached:
                continue
            if s.attempted.outcome in (AttemptOutcome.RETRY, AttemptOutcome.FAILED):
                first = failed.get(s.endpoint_id)
                at = s.attempted.finished_at
                failed[s.endpoint_id] = at if first is None or at < first else first
        gone = {s.endpoint_id for s in sent if s.gone and s.endpoint_id is not None}
        now = self.clock()
        disabled: list[str] = []
        with self.database.transaction(write=True) as session:
            recorded = outbox.record_attempts(
                session,
                [s.attempted for s in sent],
                claim=claim,
                worker=self.name,
                draw=self.draw,
            )
            outbox.release(session, untried, claim=claim)
            if reached:
                session.execute(
                    update(_ENDPOINTS)
                    .where(_ENDPOINTS.c.id.in_(reached), _ENDPOINTS.c.failing_since.is_not(None))
                    .values(failing_since=None)
                )
            for endpoint_id, since in failed.items():
                session.execute(
                    update(_ENDPOINTS)
                    .where(_ENDPOINTS.c.id == endpoint_id, _ENDPOINTS.c.failing_since.is_(None))
                    .values(failing_since=since)
                )
            too_long = set()
            if failed:
                for endpoint_id, since in session.execute(
                    core_select(_ENDPOINTS.c.id, _ENDPOINTS.c.failing_since).where(
                        _ENDPOINTS.c.id.in_(list(failed)), _ENDPOINTS.c.enabled
                    )
                ):
                    if failing_too_long(since, now):
                        too_long.add(endpoint_id)
            for endpoint_id in sorted(gone | too_long):
                reason = (
                    "the receiver answered 410 Gone"
                    if endpoint_id in gone
                    else "every delivery failed for 5 days"
                )
                if disable_endpoint(session, endpoint_id, reason=reason, actor=SENDER, now=now):
                    disabled.append(f"{endpoint_id}: {reason}")
        for line in disabled:
            logger.warning("webhook endpoint disabled: %s", line)
        return recorded, disabled

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


@dataclass(frozen=True, slots=True)
class _Result:
    sent: Sent
    unreachable: str | None = None


_RETRY = AttemptOutcome.RETRY
_CANCEL = AttemptOutcome.CANCELLED


def _add(total: BatchReport, report: BatchReport) -> None:
    total.claimed += report.claimed
    total.sent += report.sent
    total.retried += report.retried
    total.failed += report.failed
    total.cancelled += report.cancelled
    total.released += report.released
    total.disabled += report.disabled
    total.errors = (total.errors + report.errors)[-5:]


def _event_data(session: Session, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The audit events by id, shaped as `/v1/audit` shows them, without evidence and
    context (which may hold personal data, and erasure deletes)."""
    if not ids:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for row in session.execute(
        core_select(*(_EVENTS.c[name] for name in _DATA_COLUMNS)).where(_EVENTS.c.id.in_(list(ids)))
    ):
        data = row._asdict()
        data["occurred_at"] = format_time(data["occurred_at"])
        data["recorded_at"] = format_time(data["recorded_at"])
        found[data["id"]] = data
    return found


def _body(item: Claimed, events: dict[str, dict[str, Any]]) -> bytes | None:
    """`{"type", "timestamp", "data"}`: the same bytes on every attempt."""
    payload = item.payload
    if item.cause_event_id is None:
        return orjson.dumps(
            {"type": payload["type"], "timestamp": payload["timestamp"], "data": payload["data"]}
        )
    data = events.get(item.cause_event_id)
    if data is None:
        return None
    return orjson.dumps({"type": payload["type"], "timestamp": data["recorded_at"], "data": data})


async def _read_some(response: httpx.Response) -> bytes:
    """The start of an answer's body, for the error. A short body is read to its end, so
    that the connection is kept for the next delivery; a long one is not read further (the
    connection is then closed)."""
    head = b""
    async for chunk in response.aiter_raw():
        head += chunk
        if len(head) > MAX_ANSWER_BYTES:
            break
    return head[:ANSWER_CHARS]


def _answer_error(response: httpx.Response, head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    reason = f"HTTP {response.status_code}"
    if 300 <= response.status_code < 400:
        reason += " (redirects are not followed)"
    return f"{reason}: {text}" if text else reason
