"""HTTP: `/v1/consents` (one change, or a batch), `/v1/contacts/lookup`,
`/v1/contacts/{contact_id}` (read, erase, correct) and `/v1/contacts/{contact_id}/receipt`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel
from sqlmodel import Session

from prefcenter.apikeys.auth import Admin, ConsentReader, ConsentWriter
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.audit.context import RequestContextDep
from prefcenter.audit.keys import AuditKeys, audit_keys_of
from prefcenter.collector import collections_paused
from prefcenter.consent import (
    address_correction,
    batch,
    erasure,
    lookup,
    queries,
    receipts,
    service,
)
from prefcenter.consent.batch_schemas import MAX_CONSENT_BATCH, ConsentBatchIn, ConsentBatchOut
from prefcenter.consent.schemas import (
    AddressCorrectionIn,
    AddressCorrectionOut,
    ConsentChangeIn,
    ConsentChangeOut,
    ContactOut,
    ErasureOut,
    LookupIn,
    LookupOut,
    SignedReceipt,
)
from prefcenter.db import utcnow
from prefcenter.idempotency import Idempotency, IdempotentCall, JsonAnswer
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import ReadSession, WriteSession, database_of, read_database_of
from prefcenter.settings import Settings, SigningKey, settings_of, signing_keys_of

router = APIRouter(prefix="/v1", tags=["consent"], responses=problem_responses(401, 403, 503))


async def _audit_keys(request: Request) -> AuditKeys:
    """`async def`: no I/O, so no hand-off to a worker thread."""
    return audit_keys_of(request)


AuditKeysDep = Annotated[AuditKeys, Depends(_audit_keys)]
ContactId = Annotated[str, Path(description="The contact's opaque id.")]


@router.post(
    "/consents",
    summary="Record a consent change",
    # Written by pydantic once (_record_idempotently); the model documents it.
    response_model=ConsentChangeOut,
    responses=problem_responses(400, 409, 413, 422),
)
async def post_consent(
    change: ConsentChangeIn,
    caller: ConsentWriter,
    idempotency: Idempotency,
    context: RequestContextDep,
    http_request: Request,
    response: Response,
    keys: AuditKeysDep,
) -> Response:
    # On PostgreSQL the common case was answered in front of the app (consent.change_lane);
    # what it handed on takes the locking path.
    answer = await _record_idempotently(
        http_request,
        caller,
        idempotency,
        response,
        ConsentChangeOut,
        lambda session, settings, ring: service.record_change(
            session,
            change,
            caller=caller,
            request=context,
            settings=settings,
            ring=ring,
            keys=keys,
            now=utcnow(),
        ),
    )
    return _json_answer(answer, response)


@router.post(
    "/consents/batch",
    summary="Record many consent changes in one transaction",
    description=f"Up to {MAX_CONSENT_BATCH:,} changes, each as for POST /v1/consents, applied "
    "in request order (a later change of the same contact sees the earlier) under the same "
    "rules and guard. Each gets its own answer or problem document, in request order; the "
    "valid ones commit together. `Idempotency-Key` covers the whole batch.",
    # Written once, by consent.batch (_record_idempotently); the model documents it.
    response_model=ConsentBatchOut,
    responses=problem_responses(400, 413, 422),
)
async def post_consent_batch(
    changes: ConsentBatchIn,
    caller: ConsentWriter,
    idempotency: Idempotency,
    context: RequestContextDep,
    http_request: Request,
    response: Response,
    keys: AuditKeysDep,
) -> Response:
    # The batch's thousands of objects are not walked by the collector while it runs.
    with collections_paused():
        answer = await _record_idempotently(
            http_request,
            caller,
            idempotency,
            response,
            ConsentBatchOut,
            lambda session, settings, ring: batch.record_changes(
                session,
                changes,
                caller=caller,
                request=context,
                settings=settings,
                ring=ring,
                keys=keys,
                now=utcnow(),
            ),
        )
    return _json_answer(answer, response)


AnswerT = TypeVar("AnswerT", bound=BaseModel)


async def _record_idempotently(
    http_request: Request,
    caller: Caller,
    idempotency: IdempotentCall,
    response: Response,
    model: type[AnswerT],
    record: Callable[[Session, Settings, tuple[SigningKey, ...]], AnswerT | JsonAnswer],
) -> str:
    """`record` under the request's Idempotency-Key, its whole transaction in one worker
    thread (db.Database.run_api_write); its answer as JSON, written by pydantic once (for the
    Idempotency-Key's record too)."""
    settings = settings_of(http_request)
    ring = signing_keys_of(http_request)
    return await database_of(http_request).run_api_write(
        lambda session: idempotency.run_json(
            session,
            owner=caller.owner,
            response=response,
            model=model,
            call=lambda: record(session, settings, ring),
        )
    )


def _json_answer(answer: str, response: Response) -> Response:
    """The answer as pydantic wrote it (FastAPI would validate it again, a batch's thousand
    results too, and encode it with the json module), with the status and headers the
    Idempotency-Key check set on `response`."""
    return Response(
        answer,
        status_code=response.status_code or 200,
        headers=dict(response.headers),
        media_type="application/json",
    )


@router.post(
    "/contacts/lookup",
    summary="Look contacts up by address",
    # consent.lookup writes the JSON itself; the model documents it.
    response_model=LookupOut,
    responses=problem_responses(400, 413, 422),
)
async def lookup_contacts(
    query: LookupIn, _: ConsentReader, request: Request, keys: AuditKeysDep
) -> Response:
    answer = await lookup.lookup_json(
        read_database_of(request), query.emails, keys=keys, now=utcnow()
    )
    return Response(answer, media_type="application/json")


@router.get(
    "/contacts/{contact_id}",
    summary="Read a contact with its whole history",
    responses=problem_responses(404, 422),
)
def read_contact(contact_id: ContactId, caller: ConsentReader, session: ReadSession) -> ContactOut:
    return queries.read_contact(
        session, contact_id, with_evidence=caller.allows(Scope.AUDIT_READ), now=utcnow()
    )


@router.delete(
    "/contacts/{contact_id}",
    summary="Erase a contact's personal data; the address stays suppressed",
    description="Deletes the address and the evidence documents of the contact's events, "
    "removes its subscriptions and keeps it suppressed: a keyed hash of the address refuses it "
    "in later consent changes and imports, and eligibility answers `suppressed`. The trail "
    "keeps its events (without the address) and an `erasure` event; `audit verify` still "
    "passes. A repeat answers as the first erasure did and changes nothing.",
    responses=problem_responses(404, 422),
)
def erase_contact(
    contact_id: ContactId,
    caller: Admin,
    session: WriteSession,
    keys: AuditKeysDep,
    context: RequestContextDep,
) -> ErasureOut:
    return erasure.erase_contact(
        session, contact_id, keys=keys, actor=caller.actor, request=context, now=utcnow()
    )


@router.patch(
    "/contacts/{contact_id}",
    summary="Correct a contact's address (support desk)",
    description="Not part of the integration contract: an admin's correction, with a reason "
    "for the trail. The contact keeps its id, consents and history; the old address goes into "
    "no event. 409 when another contact has the address or it was erased.",
    responses=problem_responses(400, 404, 409, 413, 422),
)
def correct_address(
    contact_id: ContactId,
    correction: AddressCorrectionIn,
    caller: Admin,
    session: WriteSession,
    keys: AuditKeysDep,
    context: RequestContextDep,
) -> AddressCorrectionOut:
    return address_correction.correct_address(
        session,
        contact_id,
        correction,
        keys=keys,
        actor=caller.actor,
        request=context,
        now=utcnow(),
    )


@router.get(
    "/contacts/{contact_id}/receipt",
    summary="A signed consent receipt of the contact's current consents",
    description="Kantara Consent Receipt v1.1 fields (ISO/IEC TS 27560) with each topic's "
    "state and evidence, signed with Ed25519 over the RFC 8785 canonical bytes of `receipt`. "
    "404 for an erased contact.",
    responses=problem_responses(404, 422),
)
def read_receipt(
    contact_id: ContactId,
    _: ConsentReader,
    session: ReadSession,
    keys: AuditKeysDep,
    http_request: Request,
) -> SignedReceipt:
    return receipts.issue_receipt(
        session, contact_id, settings=settings_of(http_request), keys=keys, now=utcnow()
    )
