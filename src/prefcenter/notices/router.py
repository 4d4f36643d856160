"""HTTP: `/v1/notices` (scope `admin`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from prefcenter.apikeys.auth import Admin
from prefcenter.apikeys.schemas import Caller
from prefcenter.db import utcnow
from prefcenter.idempotency import Idempotency
from prefcenter.notices import service, team_service
from prefcenter.notices.run_export import stream_run
from prefcenter.notices.schemas import (
    NOTICE_KEY_PATTERN,
    VERSION_PATTERN,
    DeliveryMarks,
    DeliveryResults,
    NoticeIn,
    NoticeList,
    NoticeOut,
    NoticePut,
    NoticeVersionIn,
    NoticeVersionList,
    NoticeVersionOut,
    NotificationOut,
)
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import ReadSession, WriteSession, database_of
from prefcenter.settings import settings_of, signing_keys_of
from prefcenter.timestamps import Rfc3339DateTime

router = APIRouter(
    prefix="/v1/notices", tags=["notices"], responses=problem_responses(401, 403, 503)
)

KeyPath = Annotated[str, Path(pattern=NOTICE_KEY_PATTERN, description="The notice's key.")]
VersionPath = Annotated[str, Path(pattern=VERSION_PATTERN, description="The version label.")]


def _actor(caller: Caller) -> service.Actor:
    return service.Actor(name=caller.actor, channel="api")


@router.put(
    "/{key}",
    response_model=NoticeOut,
    responses={
        201: {"model": NoticeOut, "description": "Created"},
        **problem_responses(400, 409, 413, 422),
    },
    summary="Create or update a notice (its name and kind)",
)
def put_notice(
    key: KeyPath,
    spec: NoticeIn,
    caller: Admin,
    session: WriteSession,
    idempotency: Idempotency,
    response: Response,
) -> NoticeOut:
    result = idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=NoticePut,
        call=lambda: service.put_notice(session, key, spec, now=utcnow()),
        status_code=lambda put: 201 if put.created else 200,
    )
    return result.notice


@router.get("", summary="List notices")
def list_notices(_: Admin, session: ReadSession) -> NoticeList:
    return NoticeList(notices=service.list_notices(session))


@router.post(
    "/{key}/versions",
    status_code=201,
    summary="Publish an immutable version (a material one starts its notification run)",
    responses=problem_responses(400, 404, 409, 413, 422),
)
def publish_version(
    key: KeyPath,
    spec: NoticeVersionIn,
    caller: Admin,
    session: WriteSession,
    idempotency: Idempotency,
    request: Request,
    response: Response,
) -> NoticeVersionOut:
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=NoticeVersionOut,
        call=lambda: (
            service.publish_version(
                session,
                key,
                spec,
                actor=_actor(caller),
                settings=settings_of(request),
                now=utcnow(),
            ).version
        ),
        status_code=lambda _: 201,
    )


@router.get(
    "/{key}/versions",
    summary="A notice's versions, newest effective first",
    responses=problem_responses(404, 422),
)
def list_versions(key: KeyPath, _: Admin, session: ReadSession) -> NoticeVersionList:
    return NoticeVersionList(versions=service.list_versions(session, key))


@router.get(
    "/{key}/in-force",
    summary="The version in force at a time",
    responses=problem_responses(404, 422),
)
def version_in_force(
    key: KeyPath,
    _: Admin,
    session: ReadSession,
    at: Annotated[
        Rfc3339DateTime | None, Query(description="RFC 3339 with an offset; default now.")
    ] = None,
) -> NoticeVersionOut:
    when: datetime = at if at is not None else utcnow()
    return service.in_force(session, key, at=when)


@router.get(
    "/{key}/versions/{version}/notification",
    summary="Where the version's notice mails stand",
    responses=problem_responses(404, 422),
)
def notification(
    key: KeyPath, version: VersionPath, _: Admin, session: ReadSession
) -> NotificationOut:
    return service.notification(session, key, version)


@router.get(
    "/{key}/versions/{version}/notification/export",
    summary="The run as CSV, for a team that sends the notices itself",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "CSV `contact_id,email,language,notice,effective_at,"
            "preferences_url,status`, ordered by contact; erased recipients left out.",
            "content": {"text/csv": {}},
        },
        **problem_responses(404, 409, 422),
    },
)
def export_run(key: KeyPath, version: VersionPath, _: Admin, request: Request) -> StreamingResponse:
    database = database_of(request)
    with database.transaction(write=False) as session:
        facts = team_service.team_run(session, key, version)
    stream = stream_run(
        database, facts, base_url=settings_of(request).base_url, ring=signing_keys_of(request)
    )
    return StreamingResponse(stream, media_type="text/csv; charset=utf-8")


@router.post(
    "/{key}/versions/{version}/notification/deliveries",
    summary="Mark what became of recipients of a run the team sends itself",
    responses=problem_responses(400, 404, 409, 413, 422),
)
def mark_deliveries(
    key: KeyPath,
    version: VersionPath,
    marks: DeliveryMarks,
    caller: Admin,
    session: WriteSession,
) -> DeliveryResults:
    return team_service.mark_team_deliveries(
        session, key, version, marks, actor=_actor(caller), now=utcnow()
    )
