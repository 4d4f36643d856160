"""A request body that does not arrive in time gets a 408 (a problem document, or for a
recipient a page) and its connection closed, and changes nothing: a client trickling a byte a
second holds no request open for ever, the unsubscribe lane's own read included."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from prefcenter.apikeys.schemas import Scope as KeyScope
from prefcenter.app import create_app
from prefcenter.db import Database
from prefcenter.http_limits import BodyTimeout
from prefcenter.settings import Settings
from prefcenter.templating import RECIPIENT_PAGE_HEADERS
from tests.support.factories import Headers, row_counts, token_of
from tests.support.harness import issue_key
from tests.support.live_server import LiveServer, fresh_database_url, issue_live_key, live_server

ADA = "ada@example.com"
ONE_CLICK = b"List-Unsubscribe=One-Click"
TIMEOUT_S = 0.3
FORM = "application/x-www-form-urlencoded"


# --- the whole app over ASGI, with a body that stalls -----------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    starts: int  # how many `http.response.start` messages were sent


def scope_for(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }


async def call(
    app: Any, method: str, path: str, headers: dict[str, str], pieces: list[bytes], *, stall: bool
) -> Answer:
    """Send `pieces` as body messages, then either stall (the client sends nothing more and
    never goes away) or end the body."""
    incoming: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": stall or i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    outgoing: list[Message] = []

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # never: a client that sends nothing more
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        outgoing.append(message)

    await asyncio.wait_for(app(scope_for(method, path, headers), receive, send), timeout=30)
    starts = [m for m in outgoing if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in outgoing if m["type"] == "http.response.body")
    start = starts[0]
    return Answer(
        status=start["status"],
        headers={k.decode().lower(): v.decode() for k, v in start["headers"]},
        body=body,
        starts=len(starts),
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    built = create_app(settings.model_copy(update={"body_timeout_seconds": TIMEOUT_S}))
    yield built
    built.state.database.dispose()  # its lifespan never ran: called over plain ASGI


@pytest.fixture
def unsubscribe_token(database: Database, app: FastAPI) -> str:
    """A topic-less unsubscribe token for ADA, who has a subscription."""
    admin = issue_key(database, KeyScope.ADMIN, name="admin")
    with TestClient(app) as client:
        topic = {"name": "News", "kind": "marketing", "consent": "opt_in"}
        assert client.put("/v1/topics/news", headers=admin, json=topic).status_code == 201
        change = {"email": ADA, "topic": "news", "status": "subscribed"}
        assert client.post("/v1/consents", headers=admin, json=change).status_code == 200
        links = client.post("/v1/links", headers=admin, json={"email": ADA}).json()
    return token_of(links["unsubscribe_url"])


class TestStalledBody:
    def test_an_api_body_that_stalls_is_a_408_problem_and_changes_nothing(
        self, app: FastAPI, database: Database
    ) -> None:
        headers = {
            **issue_key(database, KeyScope.CONSENT_WRITE),
            "content-type": "application/json",
        }
        body = json.dumps({"email": ADA, "status": "unsubscribed"}).encode()
        before = row_counts(database)

        answer = asyncio.run(
            call(
                app,
                "POST",
                "/v1/consents",
                {**headers, "content-length": "4096"},
                [body[:5]],
                stall=True,
            )
        )

        assert answer.status == 408
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["connection"] == "close"
        assert answer.starts == 1
        problem = json.loads(answer.body)
        assert problem["status"] == 408
        assert problem["type"] == "urn:prefcenter:problem:request-timeout"
        assert "nothing was changed" in problem["detail"]
        assert row_counts(database) == before

    def test_a_one_click_body_that_stalls_is_a_408_page_and_changes_nothing(
        self, app: FastAPI, database: Database, unsubscribe_token: str
    ) -> None:
        # On PostgreSQL the unsubscribe lane reads this body itself; on SQLite the app does.
        before = row_counts(database)
        headers = {"content-type": FORM, "content-length": "4096", "accept-language": "de"}

        answer = asyncio.run(
            call(app, "POST", f"/u/{unsubscribe_token}", headers, [ONE_CLICK[:4]], stall=True)
        )

        assert answer.status == 408
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["connection"] == "close"
        for name, value in RECIPIENT_PAGE_HEADERS.items():
            assert answer.headers[name.lower()] == value
        assert "Das hat zu lange gedauert" in answer.body.decode()
        assert row_counts(database) == before

    def test_a_streamed_body_that_stalls_is_cut_off_without_an_error(
        self,
        app: FastAPI,
        database: Database,
        unsubscribe_token: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        headers = {**issue_key(database, KeyScope.ADMIN), "content-type": "text/plain"}
        before = row_counts(database)

        answer = asyncio.run(
            call(
                app,
                "POST",
                "/v1/eligibility/stream?topic=news",
                headers,
                [b"ada@example.com\n"],
                stall=True,
            )
        )

        # This answer starts before the body is read (it streams back line by line): it
        # cannot become a 408 any more, so it is cut off where it was.
        assert answer.status == 200
        assert answer.starts == 1
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
        assert row_counts(database) == before

    def test_a_body_in_pieces_that_all_arrive_in_time_is_served(
        self, app: FastAPI, database: Database, unsubscribe_token: str
    ) -> None:
        pieces = [ONE_CLICK[:10], ONE_CLICK[10:]]
        headers = {"content-type": FORM, "content-length": str(len(ONE_CLICK))}

        answer = asyncio.run(
            call(app, "POST", f"/u/{unsubscribe_token}", headers, pieces, stall=False)
        )

        assert answer.status == 200, answer.body


# --- the middleware around a plain ASGI app ------------------------------------------------


@dataclass
class Script:
    """A plain ASGI app: reads the body, starts its answer (before or after), and then waits
    for the client to go away, as a streaming answer does."""

    start_first: bool = False
    wait_for_disconnect: bool = False
    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            self.seen.append(message["type"])
            if not message.get("more_body", False):
                break
        if not self.start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        if self.wait_for_disconnect:
            self.seen.append((await receive())["type"])
        await send({"type": "http.response.body", "body": b"done"})


def run_script(script: Script, messages: list[tuple[float, Message]]) -> Answer:
    """Run `script` behind BodyTimeout; each message arrives after its delay; then silence."""
    outgoing: list[Message] = []
    pending = list(messages)

    async def receive() -> Message:
        if not pending:
            await asyncio.Event().wait()
        delay, message = pending.pop(0)
        await asyncio.sleep(delay)
        return message

    async def send(message: Message) -> None:
        outgoing.append(message)

    async def main() -> None:
        wrapped = BodyTimeout(script, timeout_s=TIMEOUT_S, streaming_prefixes=("/stream",))
        path = "/stream" if any(d < 0 for d, _ in messages) else "/x"
        await asyncio.wait_for(wrapped(scope_for("POST", path, {}), receive, send), timeout=30)

    asyncio.run(main())
    starts = [m for m in outgoing if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in outgoing if m["type"] == "http.response.body")
    return Answer(status=starts[0]["status"], headers={}, body=body, starts=len(starts))


def piece(body: bytes, *, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


class TestBodyTimeout:
    def test_the_whole_body_must_arrive_within_the_timeout_not_each_piece(self) -> None:
        # Each piece well within the timeout, together beyond it: a trickle.
        step = TIMEOUT_S / 3
        messages = [(step, piece(b"x", more=True)) for _ in range(6)]

        answer = run_script(Script(), [*messages, (step, piece(b"", more=False))])

        assert answer.status == 408

    def test_waiting_for_a_disconnect_after_the_body_is_not_timed(self) -> None:
        script = Script(wait_for_disconnect=True)
        messages = [(0.0, piece(b"body", more=False)), (TIMEOUT_S * 3, {"type": "http.disconnect"})]

        answer = run_script(script, messages)

        assert (answer.status, answer.body) == (200, b"done")
        assert script.seen == ["http.request", "http.disconnect"]

    def test_an_answer_already_started_is_cut_off_not_answered_twice(self) -> None:
        script = Script(start_first=True)

        answer = run_script(script, [(0.0, piece(b"x", more=True))])

        assert answer.status == 200
        assert answer.starts == 1
        assert answer.body == b""

    def test_a_streamed_body_may_take_long_while_each_piece_comes_in_time(self) -> None:
        # A negative delay marks the streaming path (see run_script); sleep(-x) returns at once.
        step = TIMEOUT_S / 3
        messages = [(-1.0, piece(b"x", more=True))] + [
            (step, piece(b"x", more=True)) for _ in range(6)
        ]

        answer = run_script(Script(), [*messages, (step, piece(b"", more=False))])

        assert (answer.status, answer.body) == (200, b"done")


# --- a real server and a client that trickles ----------------------------------------------

# Between two bytes of the trickle (one a second), so that the 408 never crosses a byte on
# the wire: uvicorn closes at once, and a byte arriving after that is answered with a reset.
LIVE_TIMEOUT_S = 1.5
# How long the trickling client waits for any answer: the timeout and then some. Without one
# it would wait for ever (each byte keeps the request alive).
ANSWER_WITHIN_S = LIVE_TIMEOUT_S + 15
DECLARED = 4096


@dataclass(frozen=True, slots=True)
class Live:
    server: LiveServer
    headers: Headers
    unsubscribe_path: str


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp(f"slow-body-{request.param}")
    url = fresh_database_url(request, request.param, tmp)
    headers = issue_live_key(url, KeyScope.ADMIN, name="slow")
    env = {"PREFCENTER_BODY_TIMEOUT_SECONDS": str(LIVE_TIMEOUT_S)}
    with (
        live_server(url, log_dir=tmp, extra_env=env) as server,
        httpx.Client(base_url=server.base_url, headers=headers, timeout=30.0) as api,
    ):
        topic = {"name": "News", "kind": "marketing", "consent": "opt_in"}
        assert api.put("/v1/topics/news", json=topic).status_code == 201
        change = {"email": ADA, "topic": "news", "status": "subscribed"}
        assert api.post("/v1/consents", json=change).status_code == 200
        links = api.post("/v1/links", json={"email": ADA, "topic": "news"}).json()
        yield Live(server, headers, urlsplit(links["unsubscribe_url"]).path)


class Trickle:
    """A client that declares a body of DECLARED bytes and sends one byte a second."""

    def __init__(self, base_url: str, path: str, headers: dict[str, str]) -> None:
        address = urlsplit(base_url)
        assert address.hostname is not None
        assert address.port is not None
        self.sock = socket.create_connection((address.hostname, address.port), timeout=5)
        head = [f"POST {path} HTTP/1.1", f"Host: {address.netloc}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += [f"Content-Length: {DECLARED}", "", ""]
        self.sock.sendall("\r\n".join(head).encode("latin-1"))
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.is_set() and self.sent < DECLARED and not self.answered_yet():
            try:
                self.sock.sendall(b"x")
            except OSError:
                return  # the server closed the connection
            self.sent += 1
            self.stop.wait(1.0)

    def answered_yet(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """Everything the server sends until it closes the connection."""
        self.sock.settimeout(ANSWER_WITHIN_S)
        received = b""
        try:
            while chunk := self.sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # a byte crossed the server's close; what came before it is the answer
        except TimeoutError:
            pytest.fail(f"no answer within {ANSWER_WITHIN_S} s: the server waits for ever")
        finally:
            self.stop.set()
            self.thread.join(timeout=5)
            self.sock.close()
        assert received, "the server closed the connection without an answer"
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, body


@pytest.mark.slow
class TestTricklingClient:
    def test_one_click_gets_a_408_page_and_the_server_answers_others_meanwhile(
        self, live: Live
    ) -> None:
        slow = Trickle(live.server.base_url, live.unsubscribe_path, {"Content-Type": FORM})

        self._others_are_answered_meanwhile(live, slow)
        status, headers, body = slow.answer()

        assert status == 408
        assert headers["content-type"].startswith("text/html")
        assert headers["connection"] == "close"
        assert "This took too long" in body.decode()
        assert slow.sent < DECLARED
        self._ada_is_still_subscribed(live)

    def test_an_api_request_gets_a_408_problem_and_the_server_answers_others_meanwhile(
        self, live: Live
    ) -> None:
        slow = Trickle(
            live.server.base_url,
            "/v1/consents",
            {**live.headers, "Content-Type": "application/json"},
        )

        self._others_are_answered_meanwhile(live, slow)
        status, headers, body = slow.answer()

        assert status == 408
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert json.loads(body)["type"] == "urn:prefcenter:problem:request-timeout"
        self._ada_is_still_subscribed(live)

    @staticmethod
    def _others_are_answered_meanwhile(live: Live, slow: Trickle) -> None:
        with httpx.Client(base_url=live.server.base_url, headers=live.headers) as other:
            answer = other.post("/v1/contacts/lookup", json={"emails": [ADA]})
            assert answer.status_code == 200, answer.text
        # ... while the trickling request is still waiting for its answer.
        assert not slow.answered_yet()

    @staticmethod
    def _ada_is_still_subscribed(live: Live) -> None:
        with httpx.Client(base_url=live.server.base_url, headers=live.headers) as api:
            (ada,) = api.post("/v1/contacts/lookup", json={"emails": [ADA]}).json()["contacts"]
        assert ada["suppressed"] is False
        assert [s["status"] for s in ada["subscriptions"]] == ["subscribed"]
