"""A real HTTP receiver for webhook deliveries, in a thread of the test process: it keeps
every request (headers, body, arrival time) and answers what the test tells it to.
Signatures are checked by the tests with the reference `standardwebhooks` package, never
with prefcenter's own code."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() on arrival

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def verified_by(self, secret: str) -> dict[str, Any]:
        """The body, once the reference implementation accepts the signature with `secret`
        (it raises WebhookVerificationError otherwise)."""
        parsed: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return parsed


# What the receiver answers a delivery: status and headers.
Answer = tuple[int, dict[str, str]]


@dataclass
class Inbox:
    answer: Callable[[Delivery], Answer] = lambda _: (200, {})
    deliveries: list[Delivery] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def keep(self, delivery: Delivery) -> Answer:
        answer = self.answer(delivery)
        with self.lock:
            self.deliveries.append(delivery)
            self.answered.append(answer[0])
            self.lock.notify_all()
        return answer

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def accepted(self) -> list[Delivery]:
        """Deliveries answered 2xx."""
        with self.lock:
            return [
                d
                for d, status in zip(self.deliveries, self.answered, strict=True)
                if 200 <= status < 300
            ]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.deliveries)} of {count} deliveries arrived"
                self.lock.wait(left)
            return list(self.deliveries)


@dataclass
class Receiver:
    inbox: Inbox
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks"


def _handler(inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            delivery = Delivery(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                at=time.time(),
            )
            status, headers = inbox.keep(delivery)
            reply = b"ok" if status < 400 else b"not now"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the sender opens dozens of connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes a kept-alive connection is no error of the receiver's.
        pass


@contextmanager
def receiver(inbox: Inbox | None = None, *, port: int = 0) -> Iterator[Receiver]:
    inbox = inbox or Inbox()
    server = _Server((HOST, port), _handler(inbox))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(inbox=inbox, port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
