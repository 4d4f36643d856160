"""Owns error answers: every error leaves the service as RFC 9457 `application/problem+json`."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:prefcenter:problem:"


class Problem(Exception):
    """Base of every domain error; subclasses fix the status, the type and the title.

    `detail` says what happened to this request; `extensions` adds machine-readable members
    (for example `errors` naming each bad field).
    """

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def body(self) -> dict[str, Any]:
        return problem_body(self.status, self.slug, self.title, self.detail, **self.extensions)


class NotFound(Problem):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(Problem):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Unprocessable(Problem):
    status = 422
    slug = "unprocessable"
    title = "Request cannot be processed"


class PayloadTooLarge(Problem):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class ServiceUnavailable(Problem):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"


def problem_body(
    status: int, slug: str, title: str, detail: str, **extensions: Any
) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, slug, title, detail, **extensions),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


_HTTP_TITLES = {
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Request body too large"),
}


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def validation_problem(exc: RequestValidationError) -> JSONResponse:
    """Malformed JSON is a 400; well-formed input that breaks the schema is a 422 naming fields."""
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        where = err.get("ctx", {}).get("error", "invalid JSON")
        return problem_response(
            400, "malformed-json", "Malformed JSON", f"The request body is not valid JSON: {where}."
        )
    fields = []
    for err in errors:
        field = _field_name(tuple(err.get("loc", ())))
        fields.append({"field": field, "detail": str(err.get("msg", "invalid"))})
    summary = "; ".join(f"{f['field']}: {f['detail']}" for f in fields[:5])
    return problem_response(
        422, "validation", "Invalid request", f"Invalid request: {summary}", errors=fields
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error, ours or the framework's, as problem JSON in this one place."""

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return JSONResponse(
            exc.body(), status_code=exc.status, media_type=PROBLEM_MEDIA_TYPE, headers=exc.headers
        )

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(
            exc.status_code, slug, title, detail, headers=dict(exc.headers or {})
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(
            500,
            "internal",
            "Internal error",
            "The server failed to answer; nothing was changed. Retry, or report this.",
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
