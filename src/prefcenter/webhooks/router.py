"""HTTP: `/v1/webhooks` (scope `admin`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from prefcenter.apikeys.auth import Admin
from prefcenter.apikeys.schemas import Caller
from prefcenter.db import utcnow
from prefcenter.idempotency import Idempotency
from prefcenter.problems import Unprocessable, problem_responses
from prefcenter.request_sessions import ReadSession, WriteSession
from prefcenter.settings import Settings, settings_of
from prefcenter.webhooks import deliveries, replays, service
from prefcenter.webhooks.addresses import Resolve, system_resolve
from prefcenter.webhooks.schemas import (
    ENDPOINT_ID_PATTERN,
    DeliveryList,
    DeliveryStatus,
    ReplayIn,
    ReplayOut,
    SecretRotated,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookPatch,
)

router = APIRouter(
    prefix="/v1/webhooks", tags=["webhooks"], responses=problem_responses(401, 403, 503)
)

EndpointId = Annotated[
    str, Path(pattern=ENDPOINT_ID_PATTERN, description="The endpoint's id (`ep_…`).")
]
_NOT_REPLAYABLE = (
    "The answer carries a secret, which is never stored in clear, so it cannot be replayed: "
    "send this request without Idempotency-Key (a retry after a lost answer: rotate the "
    "secret, or delete the endpoint)."
)


class SecretNotReplayable(Unprocessable):
    slug = "secret-not-replayable"
    title = "Idempotency-Key not accepted here"


def _no_idempotency_key(key: str | None) -> None:
    if key is not None:
        raise SecretNotReplayable(_NOT_REPLAYABLE)


def _actor(caller: Caller) -> service.Actor:
    return service.Actor(name=caller.actor, channel="api")


def _resolver(request: Request) -> Resolve:
    """The system resolver, or the one a test put on the app."""
    resolve: Resolve = getattr(request.app.state, "webhook_resolve", system_resolve)
    return resolve


def _settings(request: Request) -> Settings:
    return settings_of(request)


@router.post(
    "",
    status_code=201,
    summary="Create a webhook endpoint (its secret is shown only in this answer)",
    responses=problem_responses(400, 413, 422),
)
def create_webhook(
    spec: WebhookIn,
    caller: Admin,
    session: WriteSession,
    request: Request,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", include_in_schema=False)
    ] = None,
) -> WebhookCreated:
    _no_idempotency_key(idempotency_key)
    return service.create_endpoint(
        session,
        spec,
        settings=_settings(request),
        resolve=_resolver(request),
        actor=_actor(caller),
        now=utcnow(),
    )


@router.get("", summary="List webhook endpoints")
def list_webhooks(_: Admin, session: ReadSession) -> WebhookList:
    return WebhookList(webhooks=service.list_endpoints(session, now=utcnow()))


@router.get("/{endpoint_id}", summary="Read a webhook endpoint", responses=problem_responses(404))
def get_webhook(endpoint_id: EndpointId, _: Admin, session: ReadSession) -> WebhookOut:
    return service.get_endpoint(session, endpoint_id, now=utcnow())


@router.patch(
    "/{endpoint_id}",
    summary="Change a webhook endpoint (URL, events, description, enabled)",
    responses=problem_responses(400, 404, 409, 413, 422),
)
def patch_webhook(
    endpoint_id: EndpointId,
    patch: WebhookPatch,
    caller: Admin,
    session: WriteSession,
    idempotency: Idempotency,
    request: Request,
    response: Response,
) -> WebhookOut:
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=WebhookOut,
        call=lambda: service.update_endpoint(
            session,
            endpoint_id,
            patch,
            settings=_settings(request),
            resolve=_resolver(request),
            actor=_actor(caller),
            now=utcnow(),
        ),
    )


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    summary="Delete a webhook endpoint with its delivery log",
    responses=problem_responses(404, 409),
)
def delete_webhook(endpoint_id: EndpointId, caller: Admin, session: WriteSession) -> Response:
    service.delete_endpoint(session, endpoint_id, actor=_actor(caller), now=utcnow())
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="Rotate the signing secret (the old one signs beside it for 24 h)",
    responses=problem_responses(404, 409, 422),
)
def rotate_webhook_secret(
    endpoint_id: EndpointId,
    caller: Admin,
    session: WriteSession,
    request: Request,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", include_in_schema=False)
    ] = None,
) -> SecretRotated:
    _no_idempotency_key(idempotency_key)
    return service.rotate_secret(
        session, endpoint_id, settings=_settings(request), actor=_actor(caller), now=utcnow()
    )


@router.get(
    "/{endpoint_id}/deliveries",
    summary="The endpoint's deliveries, newest first, with every attempt",
    responses=problem_responses(404, 422),
)
def list_webhook_deliveries(
    endpoint_id: EndpointId,
    _: Admin,
    session: ReadSession,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, description="`next_before` of a page")] = None,
) -> DeliveryList:
    return deliveries.list_deliveries(
        session, endpoint_id, status=status, limit=limit, before=before
    )


@router.post(
    "/{endpoint_id}/replay",
    summary="Deliver again every audit event after a seq, in order",
    responses=problem_responses(400, 404, 409, 413, 422),
)
def replay_webhook(
    endpoint_id: EndpointId,
    spec: ReplayIn,
    caller: Admin,
    session: WriteSession,
    idempotency: Idempotency,
    response: Response,
) -> ReplayOut:
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=ReplayOut,
        call=lambda: replays.replay(
            session, endpoint_id, after_seq=spec.after_seq, actor=_actor(caller), now=utcnow()
        ),
    )
