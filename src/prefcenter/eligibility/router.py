"""HTTP: `/v1/eligibility` and `/v1/eligibility/stream`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from prefcenter.apikeys.auth import requires
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.audit.keys import AuditKeys, audit_keys_of
from prefcenter.db import utcnow
from prefcenter.eligibility import service, stream
from prefcenter.eligibility.schemas import EligibilityIn, EligibilityOut
from prefcenter.metrics import count_eligibility_addresses
from prefcenter.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA_NAME, problem_responses
from prefcenter.request_sessions import ReplicaSession, read_database_of
from prefcenter.topics.schemas import TopicKey

router = APIRouter(prefix="/v1", tags=["eligibility"], responses=problem_responses(401, 403, 503))

EligibilityChecker = Annotated[Caller, Depends(requires(Scope.ELIGIBILITY))]
_CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
_TEXT_BODY: dict[str, Any] = {"schema": {"type": "string"}}
_STREAM_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One address per line (`text/plain`), or CSV with a header naming an "
        "`email` column (`text/csv`). UTF-8; a BOM and CRLF line ends are fine; empty lines "
        "are skipped.",
        "content": {"text/plain": _TEXT_BODY, "text/csv": _TEXT_BODY},
    }
}
_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV `email,allowed,reason`, one row per address in input order.",
        "content": {"text/csv": _TEXT_BODY},
    },
    415: {
        "description": "The body is neither `text/plain` nor `text/csv`",
        "content": {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}}
        },
    },
    **problem_responses(404, 422),
}


class _BodyStreamingResponse(StreamingResponse):
    """A streaming answer produced while the request body is still being read.

    Starlette's own, below ASGI 2.4, listens for a disconnect alongside the answer; that
    listener takes the body's messages from under the iterator that reads them, which then
    waits forever. A client that goes away ends the body stream instead (ClientDisconnect),
    which stops the iterator.
    """

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        await self.stream_response(send)


@router.post(
    "/eligibility",
    summary="Who of these addresses may be emailed about a topic, and why (up to 10,000)",
    # The service writes the JSON itself (see service.check_eligibility); the model documents it.
    response_model=EligibilityOut,
    responses=problem_responses(400, 413, 422),
)
def check_eligibility(
    query: EligibilityIn,
    _: EligibilityChecker,
    session: ReplicaSession,
    keys: Annotated[AuditKeys, Depends(audit_keys_of)],
) -> Response:
    answer = service.check_eligibility(session, query, keys=keys, now=utcnow())
    count_eligibility_addresses("batch", len(query.emails))
    return Response(answer, media_type="application/json")


@router.post(
    "/eligibility/stream",
    summary="Eligibility for any number of addresses, streamed back as CSV in input order",
    response_class=StreamingResponse,
    responses=_STREAM_RESPONSES,
    openapi_extra=_STREAM_BODY,
)
async def stream_eligibility(
    topic: Annotated[TopicKey, Query(description="The topic's key.")],
    _: EligibilityChecker,
    request: Request,
) -> StreamingResponse:
    csv_body = stream.is_csv(request.headers.get("content-type"))
    database = read_database_of(request)
    ref = await stream.require_topic(database, topic, now=utcnow())
    answer = await stream.open_stream(
        database, ref, request.stream(), csv_body=csv_body, keys=audit_keys_of(request)
    )
    return _BodyStreamingResponse(answer, media_type=_CSV_MEDIA_TYPE)
