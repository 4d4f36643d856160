"""HTTP for recipients: `/u/{token}`, `/p/{token}`, `/c/{token}`. No auth, no cookies, no
script; GET and HEAD never change anything; every POST answers 200 with a page, never a
redirect."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.datastructures import FormData

from prefcenter.audit.context import RequestContextDep
from prefcenter.audit.keys import audit_keys_of
from prefcenter.contacts.addresses import InvalidAddress, parse_address
from prefcenter.db import utcnow
from prefcenter.links.service import manage_token
from prefcenter.preference_center import choices, confirmation, service
from prefcenter.preference_center.mail_requests import request_preferences_link
from prefcenter.preference_center.policy_in_force import PolicyVersions, policy_texts
from prefcenter.preference_center.resubscribe import LINK_LIFETIME
from prefcenter.preference_center.schemas import LinkView, PreferencesView
from prefcenter.request_sessions import database_of
from prefcenter.settings import Settings, settings_of, signing_keys_of
from prefcenter.templating import RECIPIENT_PAGE_HEADERS, Pages, keep_language, language_of
from prefcenter.tokens import (
    TokenError,
    TokenPurpose,
    VerifiedToken,
    preferences_url,
    verify_token,
)

PACKAGE_DIR = Path(__file__).parent


class _LinkConvertor(PathConvertor):
    """Starlette's `path`, but across line breaks too: a link mangled into containing one
    (`/u/%0A…`) must reach the bad-link page, not the API's JSON 404."""

    regex = "(?s:.*)"


register_url_convertor("link", _LinkConvertor())

pages = Pages([PACKAGE_DIR / "templates"])
router = APIRouter(include_in_schema=True, tags=["recipients"])

HTML: dict[str, Any] = {"content": {"text/html": {}}, "description": "A page for the person"}
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: HTML,
    400: {**HTML, "description": "The link is not valid; nothing changed"},
    404: {**HTML, "description": "The link's contact is gone; nothing changed"},
}
# GET and HEAD are declared as two routes on each page: one route with both methods gives
# both operations the same OpenAPI operationId.
# Form posts from mail clients and our own pages are tiny.
MAX_FORM_FIELDS = 200


# The token checks are `async def`: one HMAC, no I/O, so they run on the event loop instead of
# costing each request a hand-off to a worker thread and back.
async def _unsubscribe_token(request: Request, token: str) -> VerifiedToken:
    return service.read_token(
        signing_keys_of(request),
        token,
        TokenPurpose.UNSUBSCRIBE,
        now=utcnow(),
        retired=settings_of(request).retired_signing_key_ids,
    )


async def _manage_token(request: Request, token: str) -> VerifiedToken:
    return service.read_token(
        signing_keys_of(request),
        token,
        TokenPurpose.MANAGE,
        now=utcnow(),
        retired=settings_of(request).retired_signing_key_ids,
    )


async def _confirm_token(request: Request, token: str) -> VerifiedToken:
    """A double opt-in confirmation, or a resubscribe link (48 hours): both come from the
    mailbox, and `/c` takes either."""
    settings = settings_of(request)
    ring, now = signing_keys_of(request), utcnow()
    try:
        return verify_token(
            ring,
            TokenPurpose.RESUBSCRIBE,
            token,
            now=now,
            max_age=LINK_LIFETIME,
        )
    except TokenError:
        return service.read_token(
            ring,
            token,
            TokenPurpose.CONFIRM,
            now=now,
            max_age=timedelta(days=settings.confirm_link_ttl_days),
            retired=settings.retired_signing_key_ids,
        )


# Declared before the session in each handler: a bad token is refused before the database.
UnsubscribeToken = Annotated[VerifiedToken, Depends(_unsubscribe_token)]
ManageToken = Annotated[VerifiedToken, Depends(_manage_token)]
ConfirmToken = Annotated[VerifiedToken, Depends(_confirm_token)]


async def _form(request: Request) -> FormData:
    """URL-encoded or multipart (RFC 8058 clients send either); anything else is empty."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    return FormData()


Form = Annotated[FormData, Depends(_form)]


def _page(
    request: Request,
    template: str,
    view: LinkView,
    *,
    action: str,
    more: dict[str, str | None] | None = None,
) -> HTMLResponse:
    settings: Settings = settings_of(request)
    return pages.render(
        request,
        template,
        {
            "organization": settings.organization_name,
            "masked_address": view.masked_address,
            "topic_name": view.topic_name,
            "action": action,
            **(more or {}),
        },
    )


@router.get("/u/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
@router.head("/u/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def show_unsubscribe(
    token: str, verified: UnsubscribeToken, request: Request
) -> HTMLResponse:
    """The page with one button. Changes nothing: mail scanners fetch every link."""
    view = await database_of(request).run_in_transaction(
        lambda session: service.unsubscribe_view(session, verified), write=False, autocommit=True
    )
    versions: PolicyVersions = request.app.state.policy_versions
    policy = policy_texts(await versions.in_force(utcnow()))
    return _page(
        request,
        "unsubscribe.html",
        view,
        action=keep_language(request, f"/u/{token}"),
        more=policy,
    )


@router.post("/u/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def unsubscribe(
    token: str, verified: UnsubscribeToken, form: Form, context: RequestContextDep, request: Request
) -> HTMLResponse:
    """RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the page's button: out at once,
    committed before the answer is sent."""
    channel = (
        service.Channel.UNSUBSCRIBE_PAGE if form.get("via") == "page" else service.Channel.ONE_CLICK
    )
    now = utcnow()
    view = await database_of(request).run_in_transaction(
        lambda session: service.unsubscribe(
            session, verified, channel=channel, request=context, now=now
        ),
        write=True,
    )
    return _page(request, "unsubscribed.html", view, action=keep_language(request, f"/u/{token}"))


def _preferences_page(
    request: Request, token: str, view: PreferencesView, *, saved: bool
) -> HTMLResponse:
    settings = settings_of(request)
    return pages.render(
        request,
        "preferences.html",
        {
            "organization": settings.organization_name,
            "masked_address": view.masked_address,
            "suppressed": view.suppressed,
            "topics": view.topics,
            "sharing": view.sharing,
            "pending_topics": ", ".join(view.pending_topics),
            "refused_topics": ", ".join(view.refused_topics),
            "reconsent_topics": ", ".join(view.reconsent_topics),
            "confirm_all_by_mail": view.confirm_all_by_mail,
            "mail_on": request.app.state.mail is not None,
            "support_contact": settings.support_contact,
            "saved": saved,
            "privacy_policy": view.privacy_policy,
            "action": keep_language(request, f"/p/{token}"),
        },
    )


def _request_link_page(
    request: Request,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **state: bool,
) -> HTMLResponse:
    settings = settings_of(request)
    return pages.render(
        request,
        "request_link.html",
        {
            "organization": settings.organization_name,
            "support_contact": settings.support_contact,
            "mail_on": request.app.state.mail is not None,
            "action": keep_language(request, "/p"),
            "sent": False,
            "throttled": False,
            "invalid": False,
            **state,
        },
        status_code=status_code,
        headers=headers,
    )


@router.get("/p", response_class=HTMLResponse, responses={200: HTML})
@router.head("/p", response_class=HTMLResponse, responses={200: HTML})
async def show_request_link(request: Request) -> HTMLResponse:
    """ "Email me a link to my preferences": one field. Changes nothing."""
    return _request_link_page(request)


@router.post(
    "/p",
    response_class=HTMLResponse,
    responses={
        200: HTML,
        400: {**HTML, "description": "Not an email address; nothing was sent"},
        404: {**HTML, "description": "The service sends no mail of its own"},
        429: {**HTML, "description": "Too many links asked for; try again later"},
    },
)
async def request_link(form: Form, context: RequestContextDep, request: Request) -> HTMLResponse:
    """Mails a preference link to a known, not erased contact. The page is the same whatever
    the address, so it reveals nothing about who is known; rate-limited per address and per
    client network (mail_requests)."""
    mail = request.app.state.mail
    if mail is None:
        return _request_link_page(request, status_code=404)
    try:
        address = parse_address(str(form.get("email", "")))
    except InvalidAddress:
        return _request_link_page(request, status_code=400, invalid=True)
    now = utcnow()
    language = language_of(request)
    refused = await database_of(request).run_in_transaction(
        lambda session: request_preferences_link(
            session,
            mail,
            audit_keys_of(request),
            address=address,
            client_ip=context.client_ip,
            language="de" if language == "de" else "en",
            now=now,
        ),
        write=True,
    )
    if refused is not None:
        seconds = str(max(1, int(refused.retry_after.total_seconds())))
        return _request_link_page(
            request, status_code=429, headers={"Retry-After": seconds}, throttled=True
        )
    return _request_link_page(request, sent=True)


@router.get("/p/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
@router.head("/p/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def show_preferences(token: str, verified: ManageToken, request: Request) -> HTMLResponse:
    now = utcnow()
    view = await database_of(request).run_in_transaction(
        lambda session: choices.preferences_view(session, verified, now=now), write=False
    )
    return _preferences_page(request, token, view, saved=False)


@router.post("/p/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def save_preferences(
    token: str, verified: ManageToken, form: Form, context: RequestContextDep, request: Request
) -> HTMLResponse:
    chosen = {str(v) for v in form.getlist("topic")}
    shown = {str(v) for v in form.getlist("shown")}
    unsubscribe_all = form.get("action") == "unsubscribe_all"
    now = utcnow()
    mail = request.app.state.mail
    by_mail = (
        choices.ResubscribeByMail(
            mail=mail,
            keys=audit_keys_of(request),
            language="de" if language_of(request) == "de" else "en",
        )
        if mail is not None
        else None
    )
    view = await database_of(request).run_in_transaction(
        lambda session: choices.save_preferences(
            session,
            verified,
            chosen=chosen,
            shown=shown,
            unsubscribe_all=unsubscribe_all,
            request=context,
            now=now,
            by_mail=by_mail,
        ),
        write=True,
    )
    return _preferences_page(request, token, view, saved=True)


@router.get("/c/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
@router.head("/c/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def show_confirm(token: str, verified: ConfirmToken, request: Request) -> HTMLResponse:
    view = await database_of(request).run_in_transaction(
        lambda session: confirmation.confirm_view(session, verified), write=False
    )
    return _confirm_page(request, "confirm.html", view, verified, token)


@router.post("/c/{token:link}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def confirm(
    token: str, verified: ConfirmToken, context: RequestContextDep, request: Request
) -> HTMLResponse:
    now = utcnow()
    view = await database_of(request).run_in_transaction(
        lambda session: confirmation.confirm(session, verified, request=context, now=now),
        write=True,
    )
    return _confirm_page(request, "confirmed.html", view, verified, token)


def _confirm_page(
    request: Request, template: str, view: LinkView, verified: VerifiedToken, token: str
) -> HTMLResponse:
    settings = settings_of(request)
    # The preference link needs a manage token; a confirmation token must not double as one.
    manage = manage_token(
        signing_keys_of(request),
        contact_id=verified.claims.contact_id,
        campaign_id=verified.claims.campaign_id,
        now=utcnow(),
    )
    return pages.render(
        request,
        template,
        {
            "organization": settings.organization_name,
            "masked_address": view.masked_address,
            "topic_name": view.topic_name,
            "third_party": view.third_party,
            "action": keep_language(request, f"/c/{token}"),
            "preferences_url": preferences_url(settings.base_url, manage),
        },
    )


@router.options("/u/{token:link}", include_in_schema=False)
@router.options("/p/{token:link}", include_in_schema=False)
@router.options("/c/{token:link}", include_in_schema=False)
def options(token: str) -> Response:
    """Answers pre-flight probes; no CORS is offered and nothing is read or changed."""
    return Response(status_code=204, headers={"Allow": "GET, HEAD, POST", **RECIPIENT_PAGE_HEADERS})


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """Browsers ask for it on every page; there is none to give."""
    return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})


@router.get("/assets/pages.css", include_in_schema=False)
def stylesheet() -> FileResponse:
    return FileResponse(
        PACKAGE_DIR / "static" / "pages.css",
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
