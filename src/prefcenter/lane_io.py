"""Owns what an API lane (an ASGI middleware that answers a route's common case in front of the
app: consent.change_lane, consent.lookup_lane, inbound.ses_lane) takes and sends itself: which
requests, a JSON body the app would take, and its answer, named for the request log as the
route's."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import Scope, Send

_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class LaneRoute:
    """What the request log and metrics name a request a lane answered by (the route's
    template, request_log.route_template), as the app's route would be named."""

    path_format: str


def posted_to(scope: Scope, path: str) -> bool:
    """An HTTP `POST` to `path` of the app mounted at the root: the requests a lane may take."""
    return (
        scope["type"] == "http"
        and scope["path"] == path
        and scope["method"] == "POST"
        and not scope.get("root_path")
    )


def declared_small(headers: Headers, max_bytes: int) -> bool:
    """A body of a declared length the app would take (http_limits.BodySizeLimit): what a
    lane reads itself; a chunked or larger one is the app's."""
    if "transfer-encoding" in headers:
        return False
    length_text = headers.get("content-length", "")
    return length_text.isdigit() and int(length_text) <= max_bytes


def small_json(headers: Headers, max_bytes: int) -> bool:
    """A JSON body the app would take, of a declared length (`declared_small`)."""
    if not declared_small(headers, max_bytes):
        return False
    content_type = headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def send_json(
    scope: Scope,
    send: Send,
    route: LaneRoute,
    status: int,
    body: bytes,
    *,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """The answer a route returning `Response(body, media_type="application/json")` sends."""
    scope["route"] = route
    headers = [_JSON, (b"content-length", str(len(body)).encode("latin-1")), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
