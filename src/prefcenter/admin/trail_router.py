"""HTML under `/admin` for the records: the audit trail browser with its filters, the chain
verification, and the downloads (suppressions, a topic's audience, the audit trail), streamed
inside the session by the same functions as the API's exports."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import ValidationError

from prefcenter.admin.access import Form, SignedIn, SignedInPost, form_text
from prefcenter.admin.pages import AdminRoute, render
from prefcenter.admin.schemas import TrailFilter, TrailPage, form_errors
from prefcenter.admin.trail import event_query, read_trail
from prefcenter.audit import export
from prefcenter.audit.keys import AuditKeys, audit_keys_of
from prefcenter.audit.query_schemas import ExportFormat
from prefcenter.consent.ledger.replay import verify_ledger
from prefcenter.db import utcnow
from prefcenter.exports import service as exports
from prefcenter.problems import Unprocessable
from prefcenter.request_sessions import ReadSession, database_of, read_database_of
from prefcenter.topics.schemas import TopicKey
from prefcenter.topics.service import list_topics

router = APIRouter(route_class=AdminRoute)

AuditKeysDep = Annotated[AuditKeys, Depends(audit_keys_of)]
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
FILTER_FIELDS = ("email", "contact_id", "topic", "source", "actor", "since", "until")


def _filters(request: Request) -> tuple[dict[str, str], TrailFilter | None, dict[str, str]]:
    """The query string as the form shows it, parsed; or the errors to mark in the form."""
    given = {name: request.query_params.get(name, "") for name in (*FILTER_FIELDS, "cursor")}
    try:
        return given, TrailFilter.model_validate(given), {}
    except ValidationError as exc:
        return given, None, form_errors(exc)


@router.get("/audit")
def browse_trail(
    request: Request, admin: SignedIn, session: ReadSession, keys: AuditKeysDep
) -> HTMLResponse:
    given, filters, errors = _filters(request)
    page = TrailPage(events=[], next_cursor=None, problem=None)
    if filters is not None:
        page = read_trail(session, keys, filters)
    query = urlencode({name: value for name, value in given.items() if value and name != "cursor"})
    return render(
        request,
        "trail.html",
        {"filters": given, "errors": errors, "page": page, "query": query},
        admin=admin,
        status_code=422 if errors else 200,
    )


@router.get("/verify")
def show_verify(request: Request, admin: SignedIn) -> HTMLResponse:
    return render(request, "verify.html", {"result": None, "deep": False}, admin=admin)


@router.post("/verify")
def verify(request: Request, admin: SignedInPost, form: Form, keys: AuditKeysDep) -> HTMLResponse:
    """Runs the verification of `GET /v1/audit/verify`. A form post (with its token) rather
    than a link: it reads the whole trail, which no prefetch or crawler should set off."""
    deep = form_text(form, "deep") == "on"
    result = verify_ledger(database_of(request), keys, deep=deep)
    return render(
        request,
        "verify.html",
        {"result": result, "deep": deep, "ran_at": utcnow()},
        admin=admin,
    )


@router.get("/exports")
def show_exports(request: Request, admin: SignedIn, session: ReadSession) -> HTMLResponse:
    return render(request, "exports.html", {"topics": list_topics(session)}, admin=admin)


def _download(stream: StreamingResponse, filename: str) -> StreamingResponse:
    stream.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return stream


@router.get("/exports/suppressions.csv")
def export_suppressions(request: Request, admin: SignedIn) -> StreamingResponse:
    stream = exports.suppressions_csv(read_database_of(request))
    return _download(StreamingResponse(stream, media_type=CSV_MEDIA_TYPE), "suppressions.csv")


@router.get("/exports/audience/{key}.csv")
def export_audience(
    request: Request, key: Annotated[TopicKey, Path()], admin: SignedIn
) -> StreamingResponse:
    database = read_database_of(request)
    with database.transaction(write=False) as session:
        topic = exports.find_audience_topic(session, key, now=utcnow())
    stream = exports.audience_csv(database, topic)
    return _download(StreamingResponse(stream, media_type=CSV_MEDIA_TYPE), f"audience-{key}.csv")


@router.get("/exports/audit.{export_format}")
def export_trail(
    request: Request, export_format: ExportFormat, admin: SignedIn, keys: AuditKeysDep
) -> StreamingResponse:
    """The whole trail, or what the browser's filters select."""
    _, filters, errors = _filters(request)
    if filters is None:
        raise Unprocessable("Check the filters: " + " ".join(errors.values()))
    database = read_database_of(request)
    # Resolved before the answer starts, so that a bad filter is a page, not a cut download.
    with database.transaction(write=False) as session:
        query = event_query(session, keys, filters)
    return _download(
        StreamingResponse(
            export.stream_events(database, query, export_format),
            media_type=export.MEDIA_TYPES[export_format],
        ),
        f"audit.{export_format.value}",
    )
