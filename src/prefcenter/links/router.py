"""HTTP: `/v1/links` and `/v1/links/batch`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from prefcenter.apikeys.auth import requires
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.audit.keys import AuditKeys, audit_keys_of
from prefcenter.db import utcnow
from prefcenter.idempotency import Idempotency
from prefcenter.links import service
from prefcenter.links.schemas import LinkBatchIn, LinkBatchOut, LinkRequest, LinkSet
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import WriteSession
from prefcenter.settings import settings_of, signing_keys_of

router = APIRouter(prefix="/v1/links", tags=["links"])

LinkIssuer = Annotated[Caller, Depends(requires(Scope.LINKS))]
AuditKeysDep = Annotated[AuditKeys, Depends(audit_keys_of)]


@router.post(
    "",
    summary="Links and List-Unsubscribe headers for one message",
    responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
)
def issue_link(
    link: LinkRequest,
    caller: LinkIssuer,
    keys: AuditKeysDep,
    session: WriteSession,
    idempotency: Idempotency,
    request: Request,
    response: Response,
) -> LinkSet:
    settings = settings_of(request)
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=LinkSet,
        call=lambda: service.issue_link(
            session,
            link,
            settings=settings,
            ring=signing_keys_of(request),
            keys=keys,
            now=utcnow(),
        ),
    )


@router.post(
    "/batch",
    summary="Links and List-Unsubscribe headers for a whole send (up to 10,000)",
    responses=problem_responses(400, 401, 403, 413, 422, 503),
)
def issue_links(
    batch: LinkBatchIn,
    caller: LinkIssuer,
    keys: AuditKeysDep,
    session: WriteSession,
    idempotency: Idempotency,
    request: Request,
    response: Response,
) -> LinkBatchOut:
    settings = settings_of(request)
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=LinkBatchOut,
        call=lambda: LinkBatchOut(
            items=service.issue_links(
                session,
                batch.items,
                settings=settings,
                ring=signing_keys_of(request),
                keys=keys,
                now=utcnow(),
            )
        ),
    )
