"""HTTP: `/v1/suppressions` and `/v1/topics/{key}/audience`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import StreamingResponse

from prefcenter.apikeys.auth import ConsentReader, requires
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.db import utcnow
from prefcenter.exports import service
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import read_database_of
from prefcenter.topics.schemas import TopicKey

router = APIRouter(prefix="/v1", tags=["eligibility"], responses=problem_responses(401, 403, 503))

EligibilityReader = Annotated[Caller, Depends(requires(Scope.ELIGIBILITY))]
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


def _csv_response(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"text/csv": {}}}}


@router.get(
    "/suppressions",
    summary="Stream every address that must not get marketing",
    response_class=StreamingResponse,
    responses=_csv_response("CSV `email,reason,since`, ordered by contact."),
)
def export_suppressions(_: ConsentReader, request: Request) -> StreamingResponse:
    stream = service.suppressions_csv(read_database_of(request))
    return StreamingResponse(stream, media_type=CSV_MEDIA_TYPE)


@router.get(
    "/topics/{key}/audience",
    summary="Stream every address that may receive a topic",
    response_class=StreamingResponse,
    responses={
        **_csv_response("CSV `email,contact_id`, ordered by contact."),
        **problem_responses(404, 422),
    },
)
def export_audience(
    key: Annotated[TopicKey, Path()], _: EligibilityReader, request: Request
) -> StreamingResponse:
    database = read_database_of(request)
    with database.transaction(write=False) as session:
        topic = service.find_audience_topic(session, key, now=utcnow())
    stream = service.audience_csv(database, topic)
    return StreamingResponse(stream, media_type=CSV_MEDIA_TYPE)
