"""HTTP: `/v1/consents`, `/v1/contacts/lookup`, `/v1/contacts/{contact_id}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from prefcenter.apikeys.auth import ConsentReader, ConsentWriter
from prefcenter.audit.context import RequestContextDep
from prefcenter.consent import queries, service
from prefcenter.consent.schemas import (
    ConsentChangeIn,
    ConsentChangeOut,
    ContactOut,
    LookupIn,
    LookupOut,
)
from prefcenter.db import ReadSession, WriteSession
from prefcenter.idempotency import Idempotency
from prefcenter.problems import problem_responses
from prefcenter.settings import settings_of, signing_keys_of

router = APIRouter(prefix="/v1", tags=["consent"], responses=problem_responses(401, 403, 503))


@router.post(
    "/consents",
    summary="Record a consent change",
    responses=problem_responses(400, 409, 413, 422),
)
def post_consent(
    change: ConsentChangeIn,
    caller: ConsentWriter,
    session: WriteSession,
    idempotency: Idempotency,
    context: RequestContextDep,
    http_request: Request,
    response: Response,
) -> ConsentChangeOut:
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=ConsentChangeOut,
        call=lambda: service.record_change(
            session,
            change,
            caller=caller,
            request=context,
            settings=settings_of(http_request),
            ring=signing_keys_of(http_request),
        ),
    )


@router.post(
    "/contacts/lookup",
    summary="Look contacts up by address",
    responses=problem_responses(400, 413, 422),
)
def lookup_contacts(query: LookupIn, _: ConsentReader, session: ReadSession) -> LookupOut:
    return queries.lookup_contacts(session, query.emails)


@router.get(
    "/contacts/{contact_id}",
    summary="Read a contact with its whole history",
    responses=problem_responses(404, 422),
)
def read_contact(
    contact_id: Annotated[str, Path(description="The contact's opaque id.")],
    _: ConsentReader,
    session: ReadSession,
) -> ContactOut:
    return queries.read_contact(session, contact_id)
