"""HTTP: the audit trail under `/v1/audit` (scope `audit:read`) and the change feed of
consent events, `/v1/changes` (scope `consent:read`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from prefcenter.apikeys.auth import ConsentReader, requires
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.audit import changes, export, queries
from prefcenter.audit.errors import VerifyInProgress
from prefcenter.audit.keys import AuditKeys, audit_keys_of
from prefcenter.audit.query_schemas import AuditEventsOut, ChangesOut, ExportFormat
from prefcenter.audit.schemas import VerifyOut
from prefcenter.audit.verify import StateReplay, VerifyResult, verify_chain
from prefcenter.contacts.addresses import MAX_ADDRESS_OCTETS, InvalidAddress, parse_address
from prefcenter.problems import Unprocessable, problem_responses
from prefcenter.request_sessions import ReadSession, ReplicaSession, database_of, read_database_of
from prefcenter.timestamps import Rfc3339Bound

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 503))

AuditReader = Annotated[Caller, Depends(requires(Scope.AUDIT_READ))]


# --- the trail: `GET /v1/audit` and `GET /v1/audit/export` ------------------------------------

AuditKeysDep = Annotated[AuditKeys, Depends(audit_keys_of)]


# No control characters (NUL cannot even be stored in PostgreSQL text): a filter holding one
# matches nothing, so it is refused as a malformed request.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def _audit_filters(
    email: Annotated[
        str | None,
        Query(
            max_length=MAX_ADDRESS_OCTETS,
            description="Events about this address, also after it was erased or corrected.",
            # The same schema as every address field of the API (contacts.addresses).
            json_schema_extra={"format": "idn-email"},
        ),
    ] = None,
    contact_id: Annotated[str | None, Query(max_length=32, pattern=_PRINTABLE)] = None,
    topic: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)] = None,
    source: Annotated[str | None, Query(max_length=64, pattern=_PRINTABLE)] = None,
    actor: Annotated[str | None, Query(max_length=200, pattern=_PRINTABLE)] = None,
    since: Annotated[
        Rfc3339Bound | None,
        Query(description="Recorded at or after this time (RFC 3339 with an offset)."),
    ] = None,
    until: Annotated[
        Rfc3339Bound | None,
        Query(description="Recorded before this time (RFC 3339 with an offset)."),
    ] = None,
) -> queries.AuditFilters:
    address = None
    if email is not None:
        try:
            address = parse_address(email)
        except InvalidAddress as exc:
            raise Unprocessable(
                f"{email!r} is not a valid email address: {exc}",
                errors=[{"field": "email", "detail": str(exc)}],
            ) from None
    return queries.AuditFilters(
        email=address,
        contact_id=contact_id,
        topic=topic,
        source=source,
        actor=actor,
        since=since,
        until=until,
    )


Filters = Annotated[queries.AuditFilters, Depends(_audit_filters)]


@router.get(
    "",
    summary="Audit events matching every filter given, a page at a time",
    responses=problem_responses(422),
)
def list_events(
    _: AuditReader,
    session: ReplicaSession,
    keys: AuditKeysDep,
    filters: Filters,
    cursor: Annotated[
        str | None,
        Query(max_length=64, description="A `next` from an earlier page; omitted: the start."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=queries.LIMIT_MAX, description="Events per page.")
    ] = queries.LIMIT_DEFAULT,
) -> AuditEventsOut:
    query = queries.resolve_filters(session, keys, filters)
    page = queries.list_events(session, query, cursor=cursor, limit=limit)
    return AuditEventsOut(events=page.events, next=page.next)


_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every matching event, oldest first: CSV with a header row, or one JSON "
        "event per line (the shape of `/v1/audit` events).",
        "content": {"text/csv": {}, "application/jsonl": {}},
    },
    **problem_responses(422),
}


@router.get(
    "/export",
    summary="Stream every audit event matching the filters, as CSV or JSON Lines",
    response_class=StreamingResponse,
    responses=_EXPORT_RESPONSES,
)
def export_events(
    _: AuditReader,
    request: Request,
    keys: AuditKeysDep,
    filters: Filters,
    export_format: Annotated[
        ExportFormat, Query(alias="format", description="`csv` or `jsonl`.")
    ] = ExportFormat.CSV,
) -> StreamingResponse:
    database = read_database_of(request)
    # Resolved before the answer starts, so that a bad filter is a problem, not a cut stream.
    with database.transaction(write=False) as session:
        query = queries.resolve_filters(session, keys, filters)
    return StreamingResponse(
        export.stream_events(database, query, export_format),
        media_type=export.MEDIA_TYPES[export_format],
        headers={"Content-Disposition": f'attachment; filename="audit.{export_format.value}"'},
    )


# --- the chain --------------------------------------------------------------------------------


def new_verify_slot() -> threading.Lock:
    """The one verification a process runs at a time (kept in `app.state.audit_verify_slot`)."""
    return threading.Lock()


def _one_verify_at_a_time(request: Request) -> Iterator[None]:
    slot: threading.Lock = request.app.state.audit_verify_slot
    # Never waits: a caller queued behind a long verification would hold a worker thread too.
    if not slot.acquire(blocking=False):
        raise VerifyInProgress()
    try:
        yield
    finally:
        slot.release()


def chain_check() -> Callable[..., VerifyResult]:
    """The check the route runs: `verify_chain` (a dependency, so that a test can hold one)."""
    return verify_chain


# scope="function": the slot is free again as soon as the answer is ready.
VerifySlot = Annotated[None, Depends(_one_verify_at_a_time, scope="function")]
ChainCheck = Annotated[Callable[..., VerifyResult], Depends(chain_check)]


@router.get(
    "/verify",
    summary="Check the tamper-evident chain; `deep` also checks the current consent state",
    description="One verification per server process at a time: while one runs, another "
    "request gets 429 with `Retry-After`.",
    response_model=VerifyOut,
    responses=problem_responses(429),
)
def verify_trail(
    _: AuditReader,
    _slot: VerifySlot,
    check: ChainCheck,
    request: Request,
    deep: Annotated[
        bool, Query(description="Also replay the events against current subscriptions.")
    ] = False,
) -> VerifyOut:
    # The deep check lives with the state it checks, above this layer: create_app hands it
    # over (consent.ledger.replay).
    replay: StateReplay | None = request.app.state.state_replay if deep else None
    # Its own snapshot transaction (verify_chain), not the request's: a long read.
    result = check(database_of(request), audit_keys_of(request), replay=replay)
    return VerifyOut(
        ok=result.ok,
        checked=result.checked,
        first_bad_seq=result.first_bad_seq,
        first_bad_contact=result.first_bad_contact,
        detail=result.detail,
    )


# --- the change feed: `GET /v1/changes` -------------------------------------------------------

# Under `/v1`, not `/v1/audit`: a mailer's `consent:read` key reads it, not the auditor's.
changes_router = APIRouter(
    prefix="/v1", tags=["eligibility"], responses=problem_responses(401, 403, 503)
)


@changes_router.get(
    "/changes",
    summary="Consent events in commit order, from a cursor",
    description="Each event is shaped as in `/v1/audit`; `evidence` and `context` are left "
    "out unless the key also has `audit:read` (or `admin`).",
    responses=problem_responses(422),
)
def read_changes(
    caller: ConsentReader,
    session: ReadSession,
    after: Annotated[
        str | None,
        Query(max_length=64, description="A `next` from an earlier answer; omitted: the start."),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=changes.CHANGES_LIMIT_MAX, description="Events per answer.")
    ] = changes.CHANGES_LIMIT_DEFAULT,
) -> ChangesOut:
    return changes.read_changes(
        session, after=after, limit=limit, with_evidence=caller.allows(Scope.AUDIT_READ)
    )
