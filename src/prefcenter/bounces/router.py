"""HTTP: `DELETE /v1/contacts/{contact_id}/bounce` (an admin lifts a bounce, with a reason)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response

from prefcenter.apikeys.auth import Admin
from prefcenter.audit.context import RequestContextDep
from prefcenter.bounces import service
from prefcenter.bounces.schemas import BounceLiftIn, BounceLiftOut, LiftReason
from prefcenter.db import utcnow
from prefcenter.idempotency import Idempotency
from prefcenter.problems import Unprocessable, problem_responses
from prefcenter.request_sessions import WriteSession

router = APIRouter(prefix="/v1", tags=["bounces"], responses=problem_responses(401, 403, 503))


class ReasonMissing(Unprocessable):
    slug = "reason-required"
    title = "A reason is required"


@router.delete(
    "/contacts/{contact_id}/bounce",
    summary="Lift a bounce (the address may be mailed again)",
    description="For an address that was `bounced` by mistake, or that works again (the mailbox "
    'was restored). Needs `reason`, in the body `{"reason": …}` or the query, which goes '
    "into the `bounce_lifted` audit event. Soft bounces counted so far are forgotten, and "
    "bounces the ESPs date at or before the lift no longer count. An address that is not "
    "bounced answers `changed: false`.",
    responses=problem_responses(400, 404, 413, 422),
)
def lift_bounce(
    contact_id: Annotated[str, Path(description="The contact's opaque id.", max_length=64)],
    caller: Admin,
    session: WriteSession,
    idempotency: Idempotency,
    context: RequestContextDep,
    response: Response,
    body: Annotated[BounceLiftIn | None, Body()] = None,
    reason: Annotated[LiftReason | None, Query(description="Why it is lifted.")] = None,
) -> BounceLiftOut:
    why = body.reason if body is not None else reason
    if why is None:
        raise ReasonMissing(
            "Say why the bounce is lifted: `reason` in the body or the query.",
            errors=[{"field": "reason", "detail": "is required"}],
        )
    return idempotency.run(
        session,
        owner=caller.owner,
        response=response,
        model=BounceLiftOut,
        call=lambda: service.lift_bounce(
            session,
            contact_id,
            reason=why,
            actor=caller.actor,
            context={"actor_kind": "admin", **context.as_evidence()},
            now=utcnow(),
        ),
    )
