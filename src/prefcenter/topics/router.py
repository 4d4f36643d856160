"""HTTP: `/v1/topics`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from prefcenter.apikeys.auth import Admin, AnyCaller
from prefcenter.db import utcnow
from prefcenter.idempotency import Idempotency
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import ReadSession, WriteSession
from prefcenter.topics import service
from prefcenter.topics.schemas import TOPIC_KEY_PATTERN, TopicIn, TopicList, TopicOut, TopicPut

router = APIRouter(prefix="/v1/topics", tags=["topics"], responses=problem_responses(401, 503))

KeyPath = Annotated[str, Path(pattern=TOPIC_KEY_PATTERN, description="The topic's key.")]


@router.put(
    "/{key}",
    response_model=TopicOut,
    responses={
        201: {"model": TopicOut, "description": "Created"},
        **problem_responses(400, 403, 409, 413, 422),
    },
    summary="Create or update a topic",
)
def put_topic(
    key: KeyPath,
    spec: TopicIn,
    caller: Admin,
    session: WriteSession,
    idempotency: Idempotency,
    response: Response,
) -> TopicOut:
    result = idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=TopicPut,
        call=lambda: service.put_topic(session, key, spec, caller=caller, now=utcnow()),
        status_code=lambda put: 201 if put.created else 200,
    )
    return result.topic


@router.get("", summary="List topics")
def list_topics(_: AnyCaller, session: ReadSession) -> TopicList:
    return TopicList(topics=service.list_topics(session))


@router.get("/{key}", summary="Read one topic", responses=problem_responses(404, 422))
def get_topic(key: KeyPath, _: AnyCaller, session: ReadSession) -> TopicOut:
    return service.get_topic(session, key)
