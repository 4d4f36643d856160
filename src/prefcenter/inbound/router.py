"""HTTP: `/v1/inbound/{ses,sendgrid,mailgun,postmark}` (each authenticated by its ESP's own
signature, 404 until configured) and `/v1/inbound/email` (scope `inbound`)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile

from prefcenter.apikeys.auth import Forbidden, Unauthenticated
from prefcenter.apikeys.schemas import Caller, Scope
from prefcenter.apikeys.service import find_caller
from prefcenter.audit.context import RequestContextDep
from prefcenter.audit.keys import AuditKeys
from prefcenter.db import Database, utcnow
from prefcenter.inbound import receive, sendgrid, sns
from prefcenter.inbound.errors import PayloadInvalid, UnsupportedMessage
from prefcenter.inbound.receive import InboundState
from prefcenter.inbound.schemas import InboundReport, MailReport
from prefcenter.problems import problem_responses
from prefcenter.request_sessions import database_of
from prefcenter.settings import Settings, signing_keys_of

router = APIRouter(prefix="/v1/inbound", tags=["inbound"], responses=problem_responses(503))
# The same scheme as apikeys.auth declares (one `HTTPBearer` in the OpenAPI document).
_bearer = HTTPBearer(auto_error=False, description="An API key from `prefcenter api-keys create`.")
T = TypeVar("T")

# Where forwarders put the raw message: SendGrid Inbound Parse (with "POST the raw, full MIME
# message") sends it as the form field `email`, a Mailgun route to a URL ending in `mime` as
# `body-mime`, Postmark's inbound webhook (with raw content included) as JSON `RawEmail`.
_FORM_FIELDS = ("email", "body-mime")
_MESSAGE_TYPES = frozenset({"message/rfc822", "text/plain", "application/octet-stream"})


def install_inbound(app: FastAPI, settings: Settings) -> None:
    """The routes, and what they build once per process (fails at once on a bad SendGrid
    key or group map)."""
    app.state.inbound = InboundState.from_settings(settings)
    app.include_router(router)


def inbound_state(request: Request) -> InboundState:
    state: InboundState = request.app.state.inbound
    return state


def _keys(request: Request) -> AuditKeys:
    keys: AuditKeys = request.app.state.audit_keys
    return keys


async def _in_thread(database: Database, work: partial[T]) -> T:
    """Signature checks and the transaction in a worker thread, once a session slot is free
    (as every request transaction waits for one: request_sessions._request_transaction)."""
    async with database.session_slots:
        return await anyio.to_thread.run_sync(work)


def _raw_body(*media_types: str, required: bool = True) -> dict[str, Any]:
    """OpenAPI for a body the route reads raw, as bytes: whatever they hold (the signature
    covers them, or the message is read from them), so no schema says more."""
    content: dict[str, Any] = {t: {} for t in media_types}
    return {"requestBody": {"required": required, "content": content}}


_ESP_ERRORS = problem_responses(400, 401, 403, 404, 413, 422)


async def _from_esp(
    request: Request, receive_from: Callable[..., InboundReport], **signed_by: Any
) -> InboundReport:
    """An ESP's event: the raw body (what its signature covers) and what it was signed with
    (`signed_by`: headers, the certificate ring) go to `receive_from` in a worker thread."""
    body = await request.body()
    database = database_of(request)
    work = partial(
        receive_from,
        database,
        inbound_state(request),
        body,
        keys=_keys(request),
        now=utcnow(),
        **signed_by,
    )
    return await _in_thread(database, work)


@router.post(
    "/ses",
    summary="Amazon SES notifications through SNS (bounces, complaints, received mail)",
    description="Authenticated by SNS's signature (SignatureVersion 1 or 2) with the "
    "certificate at `SigningCertURL`; only topics in `PREFCENTER_SES_TOPIC_ARNS`. A "
    "SubscriptionConfirmation is confirmed by visiting its `SubscribeURL`. 404 until set.",
    responses=_ESP_ERRORS,
    openapi_extra=_raw_body("text/plain", "application/json"),
)
async def receive_ses(request: Request) -> InboundReport:
    # On PostgreSQL inbound.ses_lane answers the common cases before this route (events to
    # ignore, one recipient's bounce or complaint). With its certificate cached, a
    # notification is checked here, on the event loop (one RSA verification: tens of µs), and
    # one of ignored events only (most are) is answered without a thread or a session; the
    # rest is recorded in a worker thread as usual.
    body = await request.body()
    state, now = inbound_state(request), utcnow()
    try:
        delivery = receive.read_ses(state, body, now=now, fetch=False)
    except sns.CertificateNotCached:
        return await _from_esp(request, receive.receive_ses, ring=signing_keys_of(request))
    if (answer := receive.answer_at_once(delivery)) is not None:
        return answer
    database = database_of(request)
    work = partial(
        receive.record_ses,
        database,
        state,
        delivery,
        ring=signing_keys_of(request),
        keys=_keys(request),
        now=now,
    )
    return await _in_thread(database, work)


@router.post(
    "/sendgrid",
    summary="SendGrid's Event Webhook (bounces, spam reports, unsubscribes)",
    description="Authenticated by the Signed Event Webhook's ECDSA signature over the "
    "timestamp and body, with `PREFCENTER_SENDGRID_PUBLIC_KEY`. 404 until set.",
    responses=_ESP_ERRORS,
    openapi_extra=_raw_body("application/json"),
)
async def receive_sendgrid(request: Request) -> InboundReport:
    return await _from_esp(
        request,
        receive.receive_sendgrid,
        signature=request.headers.get(sendgrid.SIGNATURE_HEADER),
        timestamp=request.headers.get(sendgrid.TIMESTAMP_HEADER),
    )


@router.post(
    "/mailgun",
    summary="Mailgun's webhooks (failed, complained, unsubscribed)",
    description="Authenticated by the HMAC-SHA256 signature in the body, with "
    "`PREFCENTER_MAILGUN_SIGNING_KEY`; a token used before is a replay (406, which Mailgun "
    "does not retry). 404 until set.",
    responses={**_ESP_ERRORS, **problem_responses(406)},
    openapi_extra=_raw_body("application/json"),
)
async def receive_mailgun(request: Request) -> InboundReport:
    return await _from_esp(request, receive.receive_mailgun)


@router.post(
    "/postmark",
    summary="Postmark's webhooks (Bounce, SpamComplaint, SubscriptionChange)",
    description="Authenticated by HTTP basic auth with `PREFCENTER_POSTMARK_WEBHOOK_USER` and "
    "`_PASSWORD`. 404 until set.",
    responses=_ESP_ERRORS,
    openapi_extra=_raw_body("application/json"),
)
async def receive_postmark(request: Request) -> InboundReport:
    return await _from_esp(
        request,
        receive.receive_postmark,
        authorization=request.headers.get("authorization"),
    )


def _api_key_secret(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> str | None:
    """The key from `Bearer <key>`, or the password of basic credentials (forwarders that
    can only put credentials in the URL: `https://inbound:<key>@host/v1/inbound/email`)."""
    if credentials is not None:
        return credentials.credentials
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 1024:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[2] or None


def _inbound_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    secret = _api_key_secret(request, credentials)
    if secret is None:
        raise Unauthenticated("Send an API key as `Authorization: Bearer <key>` (or basic).")
    with database_of(request).transaction(write=False) as session:
        caller = find_caller(session, secret)
    if caller is None:
        raise Unauthenticated("The API key is unknown or has been revoked.")
    if not caller.allows(Scope.INBOUND):
        raise Forbidden("This API key lacks the `inbound` scope.", required_scope=Scope.INBOUND)
    return caller


async def _raw_message(request: Request) -> bytes:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in _MESSAGE_TYPES or not media_type:
        return await request.body()
    if media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        for name in _FORM_FIELDS:
            value = form.get(name)
            if isinstance(value, UploadFile):
                return await value.read()
            if isinstance(value, str):
                return value.encode("utf-8", "surrogateescape")
        raise PayloadInvalid("The form has no raw message (`email` or `body-mime`).")
    if media_type == "application/json":
        try:
            document = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise PayloadInvalid("The body is not JSON.") from exc
        raw = document.get("RawEmail") if isinstance(document, dict) else None
        if not isinstance(raw, str):
            raise PayloadInvalid("The JSON has no `RawEmail` (the raw message).")
        return raw.encode("utf-8", "surrogateescape")
    raise UnsupportedMessage(
        "Send the raw message as `message/rfc822`, or as a form's `email` or `body-mime` "
        "field, or as JSON `RawEmail`."
    )


@router.post(
    "/email",
    summary="A message sent to the List-Unsubscribe mailto: address",
    description="The raw RFC 5322 message (`message/rfc822`; also a form's `email` or "
    "`body-mime` field, or JSON `RawEmail`, as forwarders send it). The token is taken from "
    "the subject or the `+tag` of the recipient; the message unsubscribes as a one-click does. "
    "Auto-replies, delivery reports and messages with an empty return path change nothing.",
    responses=problem_responses(400, 401, 403, 413, 415, 422),
    # An empty message is one without a token: it changes nothing (200, `no_token`).
    openapi_extra=_raw_body("message/rfc822", "text/plain", required=False),
)
async def receive_email(
    request: Request,
    _: Annotated[Caller, Depends(_inbound_caller)],
    context: RequestContextDep,
) -> MailReport:
    raw = await _raw_message(request)
    return await _in_thread(
        database_of(request),
        partial(
            receive.receive_mail,
            database_of(request),
            raw,
            ring=signing_keys_of(request),
            request=context,
            now=utcnow(),
        ),
    )
