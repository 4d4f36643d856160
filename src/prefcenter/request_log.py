"""Owns what the service records of each request: its id (`X-Request-ID`, on every answer),
its line in the log and its count and time in the metrics, by route template.

`ObservedFastAPI` puts `RequestLog` outside everything else, the framework's error handler
included, so that a 500 carries its id too, and the unsubscribe lane's answers are logged and
counted like the app's.

A route template (`/u/{token}`) is what the metrics and the line name a request by; the path
itself holds tokens and, in `/v1/contacts/{contact_id}`-style routes, whatever a caller typed.
The line also carries the path, which the log's redaction turns into a token's fingerprint
(logs.RedactingFilter), so that one recipient's requests can still be followed.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from urllib.parse import quote

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefcenter import metrics
from prefcenter.logs import FIELDS, REQUEST_LOGGER

logger = logging.getLogger(REQUEST_LOGGER)

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode("latin-1")
# An incoming id is kept only if it is short and plain (it goes into every log line and back
# into a header); anything else gets a new one.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Paths the unsubscribe lane may answer before any route is matched, and the routes they are.
_RECIPIENT_PREFIXES = ("/u/", "/p/", "/c/")
# Status recorded for a request whose client went away before any answer started.
CLIENT_GONE = 499


def request_id_of(scope: Scope) -> str:
    """The id the client sent if it is safe (SAFE_REQUEST_ID), else a new one."""
    for key, value in scope.get("headers", ()):
        if key == _HEADER_KEY:
            sent: str = value.decode("latin-1")
            if SAFE_REQUEST_ID.fullmatch(sent):
                return sent
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/v1/topics/{key}`), never the path: a
    recipient link the lane answered is its route's template, anything else unmatched is
    UNMATCHED_ROUTE."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if isinstance(template, str):
        return template
    path: str = scope.get("path", "")
    for prefix in _RECIPIENT_PREFIXES:
        if path.startswith(prefix):
            return prefix + "{token}"
    return metrics.UNMATCHED_ROUTE


class RequestLog:
    """ASGI middleware: assigns the request id, sends it back, then logs and counts the
    request once its answer has been sent (or has failed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (_HEADER_KEY, request_id.encode("latin-1"))
        status: int | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER_KEY]
                message = {**message, "headers": [*headers, id_header]}
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            if status is None:
                status = 500 if failed else CLIENT_GONE
            _record(scope, request_id, status, time.perf_counter() - started)


def _record(scope: Scope, request_id: str, status: int, seconds: float) -> None:
    route = route_template(scope)
    method: str = scope["method"]
    metrics.count_request(method, route, status, seconds)
    if not logger.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    query = scope.get("query_string", b"")
    # Escaped as uvicorn's access log did: a decoded path may hold a line break.
    path = quote(scope.get("path", "")) + ("?" + query.decode("latin-1") if query else "")
    millis = round(seconds * 1000, 1)
    # The path and the id are redacted with the rest of the line (logs.RedactingFilter).
    logger.info(
        '%s - "%s %s HTTP/%s" %d %s %sms id=%s',
        f"{client[0]}:{client[1]}" if client else "-",
        method,
        path,
        scope.get("http_version", "1.1"),
        status,
        route,
        millis,
        request_id,
        extra={
            FIELDS: {
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": millis,
                "request_id": request_id,
                "process": os.getpid(),  # which worker answered
            }
        },
    )


def _on_shutdown(send: Send) -> Send:
    """`send` for the lifespan: once the app has shut down, this process's live gauges leave
    the multiprocess sums (a worker that exits)."""

    async def send_and_mark(message: Message) -> None:
        await send(message)
        if message["type"] == "lifespan.shutdown.complete":
            metrics.process_exited(os.getpid())

    return send_and_mark


class ObservedFastAPI(FastAPI):
    """FastAPI with `RequestLog` as its outermost layer (see the module)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestLog(super().build_middleware_stack())
