"""The webhook sender's HTTP/1.1 client against real sockets whose answers the tests script:
the request as sent, answers framed every way HTTP/1.1 allows (a length, chunked, until the
connection closes), kept connections and when they are dropped, answers that are not HTTP,
heads and bodies too long to read, refused addresses, and TLS that verifies the certificate
against the endpoint's name while connecting to the address that was checked."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prefcenter.delivery import checked_transport
from prefcenter.delivery.checked_transport import (
    MAX_ANSWER_BYTES,
    MAX_HEAD_BYTES,
    Answer,
    BrokenAnswer,
    CheckedConnections,
)
from prefcenter.delivery.webhook_post import _headers
from prefcenter.webhooks.addresses import AddressRefused
from tests.support.certificates import certificates

HEADERS = b"webhook-id: msg_1\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,x\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

Script = Callable[["Peer"], Awaitable[None]]


@dataclass
class Peer:
    """One connection the receiver accepted: read a request, write bytes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int  # 1 for the first connection, …

    async def request(self) -> tuple[bytes, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return head, await self.reader.readexactly(length)

    async def answer(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()


@dataclass
class Run:
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)


def loopback(host: str, port: int) -> list[Any]:
    return [ipaddress.ip_address("127.0.0.1")]


def post_all(
    script: Script,
    count: int = 1,
    *,
    path: str = "/in",
    host: str = "127.0.0.1",
    scheme: str = "http",
    server_tls: ssl.SSLContext | None = None,
    allow_private: bool = True,
    pause: float = 0.0,
) -> tuple[list[Answer | Exception], Run]:
    """`count` POSTs one after the other to a receiver on 127.0.0.1 that runs `script` on
    each connection; what each POST gave, and what the receiver saw."""
    run = Run()

    async def go() -> list[Answer | Exception]:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            run.connections += 1
            peer = Peer(reader, writer, run.connections)
            try:
                await script(peer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(accepted, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        connections = CheckedConnections(resolve=loopback, allow_private=allow_private)
        results: list[Answer | Exception] = []
        try:
            for n in range(count):
                if n and pause:
                    await asyncio.sleep(pause)
                body = b'{"n":%d}' % n
                try:
                    results.append(
                        await connections.post(f"{scheme}://{host}:{port}{path}", HEADERS, body)
                    )
                except (BrokenAnswer, AddressRefused, OSError) as exc:
                    results.append(exc)
        finally:
            await connections.aclose()
            server.close()
            await server.wait_closed()
        return results

    return asyncio.run(go()), run


def answering(*answers: bytes, keep_reading: bool = True) -> Script:
    """Each request on a connection gets the next answer (the last one again and again)."""

    async def script(peer: Peer) -> None:
        index = 0
        while True:
            await peer.request()
            await peer.answer(answers[min(index, len(answers) - 1)])
            index += 1
            if not keep_reading:
                return

    return script


class TestTheRequest:
    def test_one_post_with_the_host_the_lengths_and_the_body_as_given(self) -> None:
        seen: list[tuple[bytes, bytes]] = []

        async def script(peer: Peer) -> None:
            seen.append(await peer.request())
            await peer.answer(OK)

        (answer,), _ = post_all(script, path="/in?x=1")
        assert isinstance(answer, Answer)
        assert answer.status == 200
        ((head, body),) = seen
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /in?x=1 HTTP/1.1"
        assert lines[1].startswith(b"Host: 127.0.0.1:")
        assert b"Content-Type: application/json" in lines
        assert b"Content-Length: 7" in lines
        assert b"webhook-id: msg_1" in lines
        assert body == b'{"n":0}'

    def test_the_host_header_names_the_endpoint_not_the_address(self) -> None:
        seen: list[bytes] = []

        async def script(peer: Peer) -> None:
            seen.append((await peer.request())[0])
            await peer.answer(OK)

        post_all(script, host="hooks.invalid")
        assert b"\r\nHost: hooks.invalid:" in seen[0]

    def test_a_webhook_id_with_a_line_break_is_never_sent(self) -> None:
        with pytest.raises(BrokenAnswer, match="control character"):
            _headers("msg_1\r\nx-evil: 1", 1, "v1,x")
        assert _headers("msg_1", 1, "v1,x") == HEADERS


class TestAnswers:
    def test_status_headers_and_the_start_of_the_body(self) -> None:
        busy = b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy"
        (answer,), _ = post_all(answering(busy))
        assert answer == Answer(503, {"retry-after": "7", "content-length": "4"}, b"busy")

    def test_a_connection_is_kept_for_the_next_post(self) -> None:
        answers, run = post_all(answering(OK), 3)
        assert [a.status for a in answers if isinstance(a, Answer)] == [200, 200, 200]
        assert run.connections == 1

    def test_a_chunked_answer_is_read_to_its_end_and_its_connection_kept(self) -> None:
        chunked = (
            b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        answers, run = post_all(answering(chunked), 2)
        assert [(a.status, a.head) for a in answers if isinstance(a, Answer)] == [
            (500, b"hello"),
            (500, b"hello"),
        ]
        assert run.connections == 1

    def test_interim_answers_are_passed_over(self) -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK
        (answer,), _ = post_all(answering(interim))
        assert isinstance(answer, Answer)
        assert answer.status == 200

    def test_an_answer_without_a_length_ends_with_its_connection(self) -> None:
        async def script(peer: Peer) -> None:
            await peer.request()
            await peer.answer(b"HTTP/1.1 202 Accepted\r\n\r\nsee you")

        answers, run = post_all(script, 2)
        assert [(a.status, a.head) for a in answers if isinstance(a, Answer)] == [
            (202, b"see you"),
            (202, b"see you"),
        ]
        assert run.connections == 2

    def test_connection_close_and_http_1_0_are_not_kept(self) -> None:
        for answer in (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            # Framed both ways, or followed by bytes nobody asked for: not trusted again.
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            OK + OK,
        ):
            answers, run = post_all(answering(answer), 2)
            assert all(isinstance(a, Answer) for a in answers)
            assert run.connections == 2

    def test_a_long_body_is_not_read_on_and_its_connection_dropped(self) -> None:
        size = 4 * MAX_ANSWER_BYTES
        long = b"HTTP/1.1 500 Long\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
        chunks = (
            b"HTTP/1.1 500 Long\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"8000\r\n" + b"y" * 0x8000 + b"\r\n") * 4
        )
        for answer in (long, chunks):
            answers, run = post_all(answering(answer), 2)
            assert [a.status for a in answers if isinstance(a, Answer)] == [500, 500]
            assert all(isinstance(a, Answer) and len(a.head) == 200 for a in answers)
            assert run.connections == 2

    @pytest.mark.parametrize(
        "raw",
        [
            b"HTTP/2 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n 0\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
            (b"HTTP/1.1 103 Early Hints\r\nLink: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n\r\n")
            * 2,
        ],
    )
    def test_what_is_not_an_http_answer_is_a_broken_answer(self, raw: bytes) -> None:
        async def script(peer: Peer) -> None:
            await peer.request()
            await peer.answer(raw)

        (answer,), _ = post_all(script)
        assert isinstance(answer, BrokenAnswer)

    def test_a_head_up_to_its_limit_is_read(self) -> None:
        fill = MAX_HEAD_BYTES - 100
        raw = b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * fill + b"\r\nContent-Length: 0\r\n\r\n"
        (answer,), _ = post_all(answering(raw))
        assert isinstance(answer, Answer)
        assert len(answer.headers["x-long"]) == fill

    def test_a_folded_header_line_is_unfolded(self) -> None:
        """RFC 9112 §5.2: a user agent replaces an obs-fold with a space (h11 does); a fold
        in a framing header leaves a malformed one, refused above."""
        folded = b"HTTP/1.1 503 Busy\r\nX-A: 1\r\n\t folded\r\nContent-Length: 0\r\n\r\n"
        (answer,), _ = post_all(answering(folded))
        assert answer == Answer(503, {"x-a": "1 folded", "content-length": "0"}, b"")

    def test_a_new_connection_closed_without_an_answer_is_a_broken_answer(self) -> None:
        async def script(peer: Peer) -> None:
            await peer.request()

        (answer,), run = post_all(script)
        assert isinstance(answer, BrokenAnswer)
        assert "without answering" in str(answer)
        assert run.connections == 1


class TestKeptConnections:
    def test_one_the_receiver_closed_while_idle_is_not_used_again(self) -> None:
        async def script(peer: Peer) -> None:
            await peer.request()
            await peer.answer(OK)  # and closes

        answers, run = post_all(script, 2, pause=0.2)
        assert [a.status for a in answers if isinstance(a, Answer)] == [200, 200]
        assert run.connections == 2

    def test_one_closed_as_the_next_post_went_out_sends_it_again_on_a_new_one(self) -> None:
        """At least once: the receiver may have seen it; the webhook-id stays the same."""
        got: list[bytes] = []

        async def script(peer: Peer) -> None:
            got.append((await peer.request())[1])
            await peer.answer(OK)
            if peer.number == 1:
                got.append((await peer.request())[1])  # then closes without answering
                return
            while True:
                got.append((await peer.request())[1])
                await peer.answer(OK)

        answers, run = post_all(script, 3)
        assert [a.status for a in answers if isinstance(a, Answer)] == [200, 200, 200]
        assert run.connections == 2
        assert got == [b'{"n":0}', b'{"n":1}', b'{"n":1}', b'{"n":2}']

    def test_an_idle_one_is_closed_after_its_keepalive(self, monkeypatch: Any) -> None:
        monkeypatch.setattr(checked_transport, "KEEPALIVE_S", 0.05)
        answers, run = post_all(answering(OK), 2, pause=0.2)
        assert all(isinstance(a, Answer) for a in answers)
        assert run.connections == 2

    def test_pruning_closes_the_idle_ones_of_every_origin(self, monkeypatch: Any) -> None:
        closed: list[int] = []

        async def script(peer: Peer) -> None:
            await peer.request()
            await peer.answer(OK)
            await peer.reader.read()  # until the client closes it
            closed.append(peer.number)
            peer.writer.close()

        async def go() -> None:
            server = await asyncio.start_server(lambda r, w: script(Peer(r, w, 1)), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            connections = CheckedConnections(resolve=loopback, allow_private=True)
            await connections.post(f"http://127.0.0.1:{port}/a", HEADERS, b"{}")
            monkeypatch.setattr(checked_transport, "KEEPALIVE_S", 3600.0)
            connections.prune()
            await asyncio.sleep(0.1)
            assert closed == []  # still kept
            monkeypatch.setattr(checked_transport, "KEEPALIVE_S", 0.0)
            connections.prune()
            for _ in range(100):
                if closed:
                    break
                await asyncio.sleep(0.01)
            assert closed == [1]
            await connections.aclose()
            server.close()
            await server.wait_closed()

        asyncio.run(go())


class TestWhereItConnects:
    def test_a_refused_address_is_never_connected_to(self) -> None:
        (answer,), run = post_all(answering(OK), host="hooks.invalid", allow_private=False)
        assert isinstance(answer, AddressRefused)
        assert "loopback" in str(answer)
        assert run.connections == 0

    def test_tls_verifies_the_certificate_against_the_endpoints_name(
        self, tmp_path: Path, monkeypatch: Any
    ) -> None:
        authority, server_tls = certificates(tmp_path, "hooks.test")
        # certifi's roots do not know this authority: refused.
        (answer,), _ = post_all(
            answering(OK), host="hooks.test", scheme="https", server_tls=server_tls
        )
        assert isinstance(answer, ssl.SSLCertVerificationError)

        trusting = ssl.create_default_context(cafile=str(authority))
        monkeypatch.setattr(checked_transport, "_tls_context", lambda: trusting)
        answers, run = post_all(
            answering(OK), 2, host="hooks.test", scheme="https", server_tls=server_tls
        )
        assert [a.status for a in answers if isinstance(a, Answer)] == [200, 200]
        assert run.connections == 1
        # The same address and certificate, under another name: refused.
        (answer,), _ = post_all(
            answering(OK), host="other.test", scheme="https", server_tls=server_tls
        )
        assert isinstance(answer, ssl.SSLCertVerificationError)
