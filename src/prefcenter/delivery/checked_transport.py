"""Owns the connections webhook deliveries go out on: HTTP/1.1 POSTs over kept-alive
connections, each opened to an address of the host that was resolved and checked just now.

SSRF: the endpoint's host is resolved when a connection is opened, every address checked
(webhooks.addresses.checked_addresses), and the connection made to the address that was
checked, never to the result of a second lookup; TLS still verifies the certificate against
the host name. Redirects are not followed (an answer is only read); no proxy is used.

Why not httpx: a delivery is one small POST and one small answer, and httpx's layers (client,
transport, httpcore's pool, anyio streams, h11) cost the worker more CPU than everything else
it does per delivery. The answer is read with hard limits: its head up to MAX_HEAD_BYTES, its
body up to MAX_ANSWER_BYTES (a longer one is not read on: the connection is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from dataclasses import dataclass, field

import anyio
import httpx

from prefcenter.webhooks.addresses import Resolve, checked_addresses

# An idle connection is used again for this long, then closed (receivers close theirs after
# a few seconds too: uvicorn after 5).
KEEPALIVE_S = 4.0
# An answer's head (status line and headers), and the part of its body that is read; a body
# longer than that is not read on and its connection is dropped.
MAX_HEAD_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024
# What is kept of an answer's body (for the attempt's error).
ANSWER_KEPT = 200
USER_AGENT = b"prefcenter-webhooks/1"
_NO_BODY = frozenset({204, 304})


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
    request_line: bytes  # `POST /path?query HTTP/1.1\r\nHost: …\r\n…` up to the lengths


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float) -> bool:
        """Still open, nothing unasked for in its buffer, not idle too long."""
        return (
            now - self.idle_since < KEEPALIVE_S
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            # Bytes the receiver sent unasked: whatever they are, they are not our answer.
            and not getattr(self.reader, "_buffer", None)
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
        request = b"%b%d\r\n%b\r\n%b" % (target.request_line, len(body), headers, body)
        connection = self._kept(target)
        if connection is not None:
            try:
                return await self._exchange(target, connection, request)
            except _ClosedUnasked:
                pass  # the receiver closed it while it was idle: once more, on a new one
        connection = await self._open(target)
        try:
            return await self._exchange(target, connection, request)
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
                return _Connection(reader, writer)
        assert failure is not None
        raise failure

    async def _exchange(self, target: _Target, connection: _Connection, request: bytes) -> Answer:
        """Send the request, read the answer; the connection is kept for the next one when
        the answer allows, closed otherwise (also when this is cancelled: a timeout)."""
        kept = False
        answered = False
        try:
            connection.writer.write(request)
            await connection.writer.drain()
            try:
                line = await connection.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _ClosedUnasked from None
                raise
            answered = True
            status, headers, reusable = _parse_head(line)
            while 100 <= status < 200:  # an interim answer (100, 103): the real one follows
                if status == 101:
                    raise BrokenAnswer("the receiver switched protocols")
                status, headers, reusable = _parse_head(
                    await connection.reader.readuntil(b"\r\n\r\n")
                )
            head, complete = await _read_body(connection.reader, status, headers)
            kept = reusable and complete
            return Answer(status, headers, head)
        except (ConnectionError, ssl.SSLError) as exc:
            if not answered and connection.idle_since:
                raise _ClosedUnasked from None
            raise BrokenAnswer(f"the connection broke: {exc or type(exc).__name__}") from None
        except asyncio.IncompleteReadError:
            raise BrokenAnswer("the receiver closed the connection in its answer") from None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise BrokenAnswer(f"the answer's head is too long or malformed ({exc})") from None
        finally:
            if kept:
                connection.idle_since = asyncio.get_running_loop().time()
                self._idle.setdefault(target.origin, []).append(connection)
            else:
                connection.close()


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
    request_line = (
        b"POST %b HTTP/1.1\r\nHost: %b\r\nUser-Agent: %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        % (parsed.raw_path, parsed.netloc, USER_AGENT)
    )
    return _Target((parsed.scheme, host, port), host, port, tls, request_line)


def _parse_head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and whether the connection may be kept (HTTP/1.1 without
    `Connection: close`). Raises BrokenAnswer."""
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise BrokenAnswer(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise BrokenAnswer(f"a malformed header line: {line[:80]!r}")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    connection = headers.get("connection", "").lower()
    reusable = version == b"HTTP/1.1" and "close" not in connection
    return int(code), headers, reusable


async def _read_body(
    reader: asyncio.StreamReader, status: int, headers: dict[str, str]
) -> tuple[bytes, bool]:
    """The start of the body, and whether it was read to its end (RFC 9112 §6.3: chunked,
    a length, or until the connection closes, which leaves nothing to keep)."""
    if status in _NO_BODY:
        return b"", True
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.lower().rsplit(",", 1)[-1].strip() != "chunked":
            return await _read_to_close(reader), False
        return await _read_chunked(reader)
    length = headers.get("content-length")
    if length is None:
        return await _read_to_close(reader), False
    if not length.isdigit() or len(length) > 18:
        raise BrokenAnswer(f"a malformed Content-Length: {length[:40]!r}")
    size = int(length)
    if size > MAX_ANSWER_BYTES:
        return await reader.readexactly(min(size, ANSWER_KEPT)), False
    body = await reader.readexactly(size) if size else b""
    return body[:ANSWER_KEPT], True


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    kept = b""
    total = 0
    while True:
        line = (await reader.readuntil(b"\r\n"))[:-2]
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or size_text.strip(b"0123456789abcdefABCDEF"):
            raise BrokenAnswer(f"a malformed chunk size: {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                pass
            return kept, True
        total += size
        if total > MAX_ANSWER_BYTES:
            return kept, False
        chunk = await reader.readexactly(size)
        if len(kept) < ANSWER_KEPT:
            kept = (kept + chunk)[:ANSWER_KEPT]
        if await reader.readexactly(2) != b"\r\n":
            raise BrokenAnswer("a chunk does not end with CRLF")


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    kept = b""
    total = 0
    while total <= MAX_ANSWER_BYTES:
        chunk = await reader.read(16 * 1024)
        if not chunk:
            break
        total += len(chunk)
        if len(kept) < ANSWER_KEPT:
            kept = (kept + chunk)[:ANSWER_KEPT]
    return kept
