"""Owns error answers: every error leaves the service as RFC 9457 `application/problem+json`."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:prefcenter:problem:"
PROBLEM_SCHEMA_NAME = "Problem"


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


class FieldError(BaseModel):
    field: str = Field(description="The field, as a dotted path with [index] for list items.")
    detail: str


class ProblemDocument(BaseModel):
    """What every error answer carries (RFC 9457). Problem types may add members."""

    model_config = ConfigDict(extra="allow", title=PROBLEM_SCHEMA_NAME)

    type: str = Field(description="A URI naming the problem type: `urn:prefcenter:problem:…`.")
    title: str
    status: int
    detail: str = Field(description="What went wrong with this request.")
    errors: list[FieldError] = Field(
        default_factory=list, description="On 422: each field that is invalid, and why."
    )


_RESPONSE_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request, such as a body that is not JSON",
    401: "Missing, unknown or revoked API key",
    403: "The API key lacks the scope",
    404: "Not found",
    406: "Refused for good: the sender is not to retry it",
    409: "Conflicts with the current state; nothing was changed",
    413: "Request body too large",
    415: "The body's media type is not one this route reads",
    422: "Invalid request; `errors` names each field",
    429: "Too many at once; nothing was done, retry after `Retry-After` seconds",
    503: "The database is busy or unreachable; nothing was changed, retry (see `Retry-After`)",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries declaring these statuses as problem documents."""
    return {
        status: {
            "description": _RESPONSE_DESCRIPTIONS[status],
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}
                }
            },
        }
        for status in statuses
    }


# FastAPI's own shape for request validation errors, which it documents as the 422 of every
# route with parameters that declares none; `install_problem_handlers` never sends it.
_FRAMEWORK_422_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _is_framework_422(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/" + _FRAMEWORK_422_SCHEMAS[0]))


def document_problems(app: FastAPI) -> None:
    """Add the `Problem` schema that `problem_responses` refers to to the app's OpenAPI
    document (FastAPI only adds schemas of models it renders itself), and document every
    validation error as the problem document it is answered with."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if PROBLEM_SCHEMA_NAME not in schemas:
            problem = ProblemDocument.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))
            schemas[PROBLEM_SCHEMA_NAME] = problem
            for path_item in document.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if _is_framework_422(responses.get("422", {})):
                        responses["422"] = problem_responses(422)[422]
            for name in _FRAMEWORK_422_SCHEMAS:
                schemas.pop(name, None)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


_HTTP_TITLES = {
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    408: ("request-timeout", "Request timeout"),
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


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path. A 405 must list them all in
    `Allow` (RFC 9110 §15.5.6); the router names only those of the first route that matched
    the path, so `PUT` and `GET` on one path would each deny the other."""
    allowed = []
    for method in _METHODS:
        scope = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
            "query_string": b"",
        }
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


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

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(exc.status_code, slug, title, detail, headers=headers)

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
