"""Owns the connections webhook deliveries go out on: HTTP/1.1 POSTs over kept-alive
connections, each opened to an address of the host that was resolved and checked just now.

SSRF: the endpoint's host is resolved when a connection is opened, every address checked
(webhooks.addresses.checked_addresses), and the connection made to the address that was
checked, never to the result of a second lookup; TLS still verifies the certificate against
the host name. Redirects are not followed (an answer is only read); no proxy is used.

HTTP/1.1 is h11's, one h11.Connection per connection: it writes the request, parses and
frames the answer (a length, chunked, until the connection closes; interim 1xx answers) and
decides whether the connection may carry the next request. What is ours: the sockets, which
connection is used again, and hard limits on what is read: the answer's head (with any
interim answers) up to MAX_HEAD_BYTES, its body up to MAX_ANSWER_BYTES (a longer one is not
read on: the connection is dropped).

Why not httpx: a delivery is one small POST and one small answer, and httpx's layers above
h11 (client, transport, httpcore's pool, anyio streams) cost the worker more CPU than
everything else it does per delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from dataclasses import dataclass, field

import anyio
import h11
import httpx

from prefcenter.webhooks.addresses import Resolve, checked_addresses

# An idle connection is used again for this long, then closed (receivers close theirs after
# a few seconds too: uvicorn after 5).
KEEPALIVE_S = 4.0
# An answer's head (status line and headers, with any interim answers before it), and the
# part of its body that is read; a body longer than that is not read on and its connection
# is dropped.
MAX_HEAD_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024
# What is kept of an answer's body (for the attempt's error).
ANSWER_KEPT = 200
USER_AGENT = b"prefcenter-webhooks/1"
_READ_BYTES = 64 * 1024


class BrokenAnswer(Exception):
    """The receiver was reached, but its answer is not HTTP/1.x as it should be, or it was
    cut off."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated one keeps its last value
    head: bytes  # the start of the body, up to ANSWER_KEPT bytes


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a URL's deliveries go, worked out once per URL."""

    origin: tuple[str, str, int]  # scheme, host (IDNA), port
    host: str  # what is resolved, and the TLS server name
    port: int
    tls: bool
    path: bytes  # the request target: path and query, percent-encoded
    host_header: bytes  # the host (IDNA), and the port unless it is the scheme's


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection
    idle_since: float = 0.0

    def usable(self, now: float) -> bool:
        """Still open, nothing unasked for in its buffer, not idle too long."""
        return (
            now - self.idle_since < KEEPALIVE_S
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            # Bytes the receiver sent unasked: whatever they are, they are not our answer.
            # (StreamReader keeps them in `_buffer`; a Python without it gets no reuse, rather
            # than an answer read from bytes that came before its request.)
            and not getattr(self.reader, "_buffer", b"unknown")
        )

    def close(self) -> None:
        self.writer.close()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificates verified against certifi's roots (as httpx did), made once per process:
    loading the roots costs tens of milliseconds."""
    return httpx.create_ssl_context(trust_env=False)


@dataclass(slots=True)
class CheckedConnections:
    """Kept-alive connections by origin, opened only to addresses checked just now."""

    resolve: Resolve
    allow_private: bool
    _idle: dict[tuple[str, str, int], list[_Connection]] = field(default_factory=dict)
    _targets: dict[str, _Target] = field(default_factory=dict)

    async def post(self, url: str, headers: bytes, body: bytes) -> Answer:
        """POST `body` with `headers` (`name: value\\r\\n` lines, checked by the caller) to
        `url`. Raises AddressRefused or OSError when no connection can be opened,
        BrokenAnswer when the answer is not one."""
        target = self._target(url)
        fields = [
            (b"Host", target.host_header),
            (b"User-Agent", USER_AGENT),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"%d" % len(body)),
        ]
        for line in headers.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                fields.append((name, value))
        # h11 checks every name and value (no line breaks): a bad one raises
        # h11.LocalProtocolError before anything is sent.
        request = h11.Request(method=b"POST", target=target.path, headers=fields)
        connection = self._kept(target)
        if connection is not None:
            try:
                return await self._exchange(target, connection, request, body)
            except _ClosedUnasked:
                pass  # the receiver closed it while it was idle: once more, on a new one
        connection = await self._open(target)
        try:
            return await self._exchange(target, connection, request, body)
        except _ClosedUnasked:
            raise BrokenAnswer("the receiver closed the connection without answering") from None

    def prune(self) -> None:
        """Close the connections that have been idle too long, of every origin (those of an
        origin no longer posted to would otherwise stay open)."""
        now = asyncio.get_running_loop().time()
        for origin, idle in list(self._idle.items()):
            kept = [c for c in idle if c.usable(now)]
            for connection in idle:
                if connection not in kept:
                    connection.close()
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
        for connections in idle.values():
            for connection in connections:
                with contextlib.suppress(OSError):
                    await connection.writer.wait_closed()

    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            if len(self._targets) > 1000:
                self._targets.clear()
            found = self._targets[url] = _target_of(url)
        return found

    def _kept(self, target: _Target) -> _Connection | None:
        idle = self._idle.get(target.origin)
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        return None

    async def _open(self, target: _Target) -> _Connection:
        addresses = await anyio.to_thread.run_sync(
            functools.partial(
                checked_addresses,
                target.host,
                target.port,
                resolve=self.resolve,
                allow_private=self.allow_private,
            )
        )
        failure: OSError | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    str(address),
                    target.port,
                    ssl=_tls_context() if target.tls else None,
                    server_hostname=target.host if target.tls else None,
                    limit=MAX_HEAD_BYTES,
                )
            except OSError as exc:
                failure = exc
            else:
                http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
                return _Connection(reader, writer, http)
        assert failure is not None
        raise failure

    async def _exchange(
        self, target: _Target, connection: _Connection, request: h11.Request, body: bytes
    ) -> Answer:
        """Send the request, read the answer; the connection is kept for the next one when
        h11 says it may be, closed otherwise (also when this is cancelled: a timeout)."""
        http = connection.http
        reading = _Reading(http, connection.reader)
        kept = False
        try:
            sent = (
                http.send(request),
                http.send(h11.Data(data=body)),
                http.send(h11.EndOfMessage()),
            )
            connection.writer.write(b"".join(part for part in sent if part is not None))
            await connection.writer.drain()
            answer, kept = await reading.answer()
        except h11.RemoteProtocolError as exc:
            raise BrokenAnswer(f"not an HTTP/1.1 answer: {exc}") from None
        except (ConnectionError, ssl.SSLError) as exc:
            if not reading.received and connection.idle_since:
                raise _ClosedUnasked from None
            raise BrokenAnswer(f"the connection broke: {exc or type(exc).__name__}") from None
        else:
            if kept:
                http.start_next_cycle()
            return answer
        finally:
            if kept:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.setdefault(target.origin, []).append(connection)
            else:
                connection.close()


@dataclass(slots=True)
class _Reading:
    """One answer, parsed by h11 from what is read with the limits."""

    http: h11.Connection
    reader: asyncio.StreamReader
    received: int = 0  # bytes read, heads and body
    response: h11.Response | None = None
    start: bytes = b""  # of the body, up to ANSWER_KEPT bytes
    body_read: int = 0

    async def answer(self) -> tuple[Answer, bool]:
        """The answer, and whether its connection may carry the next request. Raises
        h11.RemoteProtocolError, BrokenAnswer, _ClosedUnasked."""
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif type(event) is h11.Data:
                self.body_read += len(event.data)
                if len(self.start) < ANSWER_KEPT:
                    self.start = (self.start + event.data)[:ANSWER_KEPT]
                if self.body_read > MAX_ANSWER_BYTES:
                    return self._answer(), False  # not read on: the connection is dropped
            elif type(event) is h11.Response:
                self.response = event
            elif type(event) is h11.EndOfMessage:
                answer = self._answer()
                # Not trusted with another request: an answer framed both ways (h11 goes by
                # its chunks; a smuggling sign, RFC 9112 §6.3), or bytes after its end.
                reusable = (
                    self.http.our_state is h11.DONE
                    and self.http.their_state is h11.DONE
                    and self.http.trailing_data == (b"", False)
                    and not (
                        "content-length" in answer.headers and "transfer-encoding" in answer.headers
                    )
                )
                return answer, reusable
            elif type(event) is not h11.InformationalResponse:  # a 1xx: the answer follows
                raise BrokenAnswer(f"the answer ended unexpectedly: {event!r}"[:200])

    async def _receive(self) -> None:
        # Until the head is complete, never more than its limit: h11's own limit holds for
        # one incomplete head, not for a head that arrives whole in one read, nor for
        # interim answers before it.
        size = _READ_BYTES if self.response is not None else MAX_HEAD_BYTES + 1 - self.received
        if size <= 0:
            raise BrokenAnswer("the answer's head is too long")
        data = await self.reader.read(size)
        if not data and not self.received:
            raise _ClosedUnasked
        self.received += len(data)
        self.http.receive_data(data)

    def _answer(self) -> Answer:
        assert self.response is not None
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in self.response.headers
        }
        return Answer(self.response.status_code, headers, self.start)


class _ClosedUnasked(Exception):
    """A kept connection was closed by the receiver before it answered this request: it is
    sent again on a new connection (at least once; the webhook-id stays the same)."""


def _target_of(url: str) -> _Target:
    """The URL as httpx would send it: the host IDNA-encoded, the path percent-encoded, the
    Host header without a default port."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https"):
        raise BrokenAnswer(f"not an http(s) URL: {url}")
    tls = parsed.scheme == "https"
    port = parsed.port or (443 if tls else 80)
    host = parsed.raw_host.decode("ascii")
    return _Target((parsed.scheme, host, port), host, port, tls, parsed.raw_path, parsed.netloc)
