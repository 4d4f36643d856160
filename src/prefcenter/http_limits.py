"""Owns the limits on a request body: its size (413 before it is parsed) and the time it may
take to arrive (408)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefcenter.problems import problem_response


class BodySizeLimit:
    """Refuse bodies larger than `max_bytes`, by `Content-Length` at once, or while streaming
    for chunked bodies. Paths under `exempt_prefixes` stream without limit (they read
    incrementally and never hold the body)."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, exempt_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = exempt_prefixes

    def _detail(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    response = problem_response(
                        413, "payload-too-large", "Request body too large", self._detail()
                    )
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes HTTPException through body parsing; the problem handler
                    # renders it.
                    raise HTTPException(413, detail=self._detail())
            return message

        await self.app(scope, limited_receive, send)


class BodyTimedOut(HTTPException):
    """Raised from `receive` when the body is late. An HTTPException because FastAPI lets one
    through its body parsing (anything else becomes a 400 there); BodyTimeout answers it."""

    def __init__(self, detail: str) -> None:
        super().__init__(408, detail=detail)


def _is_timeout(exc: BaseException | None, depth: int = 0) -> bool:
    """Whether `exc` is BodyTimedOut, or was raised because of one: Starlette re-raises it as
    a RuntimeError once an answer has started, anyio task groups wrap it in a group."""
    if exc is None or depth > 8:
        return False
    if isinstance(exc, BodyTimedOut):
        return True
    if isinstance(exc, BaseExceptionGroup) and exc.subgroup(BodyTimedOut) is not None:
        return True
    return _is_timeout(exc.__cause__ or exc.__context__, depth + 1)


class BodyTimeout:
    """Answer 408 to a client whose request body does not arrive in time, and close its
    connection, so that a client trickling a byte a second holds no request open for ever.

    The whole body must arrive within `timeout_s` of the first read of it. Under
    `streaming_prefixes` (bodies of any size, read as they come) each read must bring data
    within `timeout_s` instead. After the last body message nothing is timed: a streaming
    answer waits for a disconnect there.

    Outermost, so that it also covers handlers in front of the app that read the body
    themselves (the unsubscribe lane). Once the body is late, whatever the app still sends is
    dropped: the answer is this middleware's own, a problem document, or for paths under
    `page_prefixes` the page `page` makes (recipients get HTML). A response already started
    cannot be taken back; it is cut off instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout_s: float,
        streaming_prefixes: tuple[str, ...] = (),
        page_prefixes: tuple[str, ...] = (),
        page: Callable[[Scope], Response] | None = None,
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.streaming_prefixes = streaming_prefixes
        self.page_prefixes = page_prefixes
        self.page = page

    def _detail(self) -> str:
        return (
            f"The request body did not arrive within {self.timeout_s:g} seconds; "
            "nothing was changed."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = scope["path"].startswith(self.streaming_prefixes)
        deadline: float | None = None
        body_done = False
        timed_out = False
        started = False  # the app's answer began before the body was late

        async def timed_receive() -> Message:
            nonlocal deadline, body_done, timed_out
            if timed_out:
                raise BodyTimedOut(self._detail())
            if body_done:
                return await receive()
            now = anyio.current_time()
            if streaming:
                limit = self.timeout_s
            else:
                if deadline is None:
                    deadline = now + self.timeout_s
                limit = max(deadline - now, 0.0)
            with anyio.move_on_after(limit) as waited:
                message = await receive()
            if waited.cancelled_caught:
                timed_out = True
                raise BodyTimedOut(self._detail())
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except BaseException as exc:
            if not (timed_out and _is_timeout(exc)):
                raise
        if timed_out and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.page is not None and scope["path"].startswith(self.page_prefixes):
            response = self.page(scope)
        else:
            response = problem_response(408, "request-timeout", "Request timeout", self._detail())
        # The rest of the body may still come: the connection cannot carry another request.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


async def read_whole_body(receive: Receive) -> bytes | None:
    """The whole body (its declared length was checked and the server holds
    the client to it); None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A `receive` that gives the app the body a lane in front of it already read, then the
    client's."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
