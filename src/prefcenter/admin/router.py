"""HTML under `/admin`: sign-in and sign-out, the dashboard, contact search, the contact page
with its support-desk change and erasure forms. Every page needs a live session (else 303 to
sign-in); every form post needs its CSRF token (else 403, nothing changed)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from prefcenter.admin import contacts
from prefcenter.admin.access import (
    Form,
    SignedIn,
    SignedInPost,
    check_sign_in_csrf,
    clear_session_cookie,
    clear_sign_in_cookie,
    form_text,
    known_device,
    set_device_cookie,
    set_session_cookie,
    set_sign_in_cookie,
    sign_in_token,
)
from prefcenter.admin.errors import SignInThrottled
from prefcenter.admin.headers import AdminPageHeaders
from prefcenter.admin.mail_router import router as mail_router
from prefcenter.admin.notices_router import router as notices_router
from prefcenter.admin.pages import PACKAGE_DIR, AdminRoute, error_page, render, see_other
from prefcenter.admin.schemas import ContactView, StaffChangeIn, StaffChangeSource, form_errors
from prefcenter.admin.sessions import ActiveSession, end_session
from prefcenter.admin.sign_in import SignInOutcome, sign_in_with_api_key, sign_in_with_password
from prefcenter.admin.trail_router import router as trail_router
from prefcenter.admin.webhooks_router import router as webhooks_router
from prefcenter.audit.context import RequestContextDep
from prefcenter.audit.keys import AuditKeys, audit_keys_of
from prefcenter.bounces.service import lift_bounce as lift_bounce_of
from prefcenter.db import utcnow
from prefcenter.request_sessions import ReadSession, WriteSession

router = APIRouter(prefix="/admin", route_class=AdminRoute, include_in_schema=False)
router.include_router(trail_router)
router.include_router(mail_router)
router.include_router(webhooks_router)
router.include_router(notices_router)

ContactId = Annotated[str, Path(max_length=64)]
# The search field's `maxlength`: the longest address with room for spaces around it.
MAX_QUERY_CHARS = 320
AuditKeysDep = Annotated[AuditKeys, Depends(audit_keys_of)]


def install_admin_console(app: FastAPI) -> None:
    """Mount the console, with its headers on every answer under `/admin`."""
    app.add_middleware(AdminPageHeaders)
    app.include_router(router)


@router.get("/assets/admin.css")
def stylesheet() -> FileResponse:
    return FileResponse(PACKAGE_DIR / "static" / "admin.css", media_type="text/css")


def _sign_in_page(
    request: Request, *, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    token = sign_in_token(request)
    response = render(
        request,
        "sign_in.html",
        {"sign_in_token": token, "error": error},
        admin=None,
        status_code=status_code,
    )
    set_sign_in_cookie(response, request, token)
    return response


@router.get("/sign-in")
def show_sign_in(request: Request) -> HTMLResponse:
    return _sign_in_page(request)


@router.post("/sign-in")
def sign_in(
    request: Request, form: Form, context: RequestContextDep, session: WriteSession
) -> Response:
    """A password or an admin API key. A failure answers 401 and is counted (the transaction
    commits it, since failures are answered, not raised); after too many, a try answers 429
    with how long to wait, right or wrong, and is not checked."""
    check_sign_in_csrf(request, form)
    now = utcnow()
    if form_text(form, "method") == "api_key":
        result = sign_in_with_api_key(
            session, secret=form_text(form, "api_key"), client_ip=context.client_ip, now=now
        )
    else:
        result = sign_in_with_password(
            session,
            username=form_text(form, "username"),
            password=form_text(form, "password"),
            client_ip=context.client_ip,
            device=known_device(request, now=now),
            now=now,
        )
    if result.outcome is SignInOutcome.THROTTLED:
        return error_page(request, SignInThrottled.waiting(result.wait))
    if result.outcome is SignInOutcome.REFUSED or result.token is None:
        return _sign_in_page(
            request,
            error="Sign-in failed: wrong username or password, or an API key without the "
            "admin scope.",
            status_code=401,
        )
    redirect = see_other("/admin")
    set_session_cookie(redirect, request, result.token)
    clear_sign_in_cookie(redirect, request)
    if result.device is not None:
        set_device_cookie(redirect, request, result.device, now)
    return redirect


@router.post("/sign-out")
def sign_out(request: Request, admin: SignedInPost, session: WriteSession) -> RedirectResponse:
    end_session(session, admin.id)
    redirect = see_other("/admin/sign-in")
    clear_session_cookie(redirect, request)
    return redirect


@router.get("")
def dashboard(request: Request, admin: SignedIn) -> HTMLResponse:
    return render(request, "dashboard.html", {}, admin=admin)


def _search_page(
    request: Request,
    admin: ActiveSession,
    *,
    q: str = "",
    searched: bool = False,
    too_long: bool = False,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "search.html",
        {"q": q, "searched": searched, "too_long": too_long},
        admin=admin,
        status_code=status_code,
    )


@router.get("/contacts")
def show_search(request: Request, admin: SignedIn) -> HTMLResponse:
    """The empty search form. An address never travels in a URL (a query string lands in
    access logs, browser history and Referer headers): the form posts it."""
    return _search_page(request, admin)


@router.post("/contacts")
def search_contacts(
    request: Request, admin: SignedInPost, form: Form, session: ReadSession
) -> Response:
    """By address or contact id: straight to the contact's page when there is one."""
    q = form_text(form, "q")
    if len(q) > MAX_QUERY_CHARS:
        return _search_page(request, admin, too_long=True, status_code=422)
    if not q.strip():
        return _search_page(request, admin)
    found = contacts.find_contact_id(session, q)
    if found is not None:
        return see_other(f"/admin/contacts/{quote(found)}")
    return _search_page(request, admin, q=q, searched=True, status_code=404)


def _contact_page(
    request: Request,
    admin: ActiveSession,
    view: ContactView,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "contact.html",
        {
            "view": view,
            "contact": view.contact,
            "topic_names": {t.key: t.name for t in view.topics},
            "sources": [s.value for s in StaffChangeSource],
            "form": form or {},
            "errors": errors or {},
            "recorded": request.query_params.get("recorded"),
        },
        admin=admin,
        status_code=status_code,
    )


@router.get("/contacts/{contact_id}")
def show_contact(
    request: Request, contact_id: ContactId, admin: SignedIn, session: ReadSession
) -> HTMLResponse:
    return _contact_page(request, admin, contacts.contact_view(session, contact_id, now=utcnow()))


@router.post("/contacts/{contact_id}/changes")
def record_change(
    request: Request,
    contact_id: ContactId,
    admin: SignedInPost,
    form: Form,
    context: RequestContextDep,
    session: WriteSession,
) -> Response:
    """A staff change; a form without a reason (or a subscription without evidence)
    comes back with the errors marked and nothing recorded."""
    fields = {
        name: form_text(form, name) for name in ("topic", "status", "source", "reason", "evidence")
    }
    try:
        change = StaffChangeIn.model_validate(fields)
    except ValidationError as exc:
        return _contact_page(
            request,
            admin,
            contacts.contact_view(session, contact_id, now=utcnow()),
            form=fields,
            errors=form_errors(exc),
            status_code=422,
        )
    applied = contacts.record_staff_change(
        session, contact_id, change, actor=admin.actor, request=context
    )
    return see_other(f"/admin/contacts/{quote(contact_id)}?recorded={applied.event_id}#timeline")


@router.post("/contacts/{contact_id}/bounce/lift")
def lift_bounce(
    request: Request,
    contact_id: ContactId,
    admin: SignedInPost,
    form: Form,
    context: RequestContextDep,
    session: WriteSession,
) -> Response:
    """Lift a bounce with the staff member's reason; without one, nothing changes."""
    reason = form_text(form, "reason").strip()
    if not reason:
        return _contact_page(
            request,
            admin,
            contacts.contact_view(session, contact_id, now=utcnow()),
            errors={"lift_reason": "Say why the address may be mailed again."},
            status_code=422,
        )
    lifted = lift_bounce_of(
        session,
        contact_id,
        reason=reason[:2000],
        actor=admin.actor,
        context={**context.as_evidence(), "channel": contacts.CHANNEL},
        now=utcnow(),
    )
    recorded = f"?recorded={quote(lifted.event_id)}" if lifted.event_id else ""
    return see_other(f"/admin/contacts/{quote(contact_id)}{recorded}#timeline")


@router.get("/contacts/{contact_id}/erase")
def confirm_erase(
    request: Request, contact_id: ContactId, admin: SignedIn, session: ReadSession
) -> HTMLResponse:
    """The confirmation step: erasure cannot be undone."""
    view = contacts.contact_view(session, contact_id, now=utcnow())
    return render(request, "erase.html", {"contact": view.contact}, admin=admin)


@router.post("/contacts/{contact_id}/erase")
def erase(
    contact_id: ContactId,
    admin: SignedInPost,
    form: Form,
    keys: AuditKeysDep,
    context: RequestContextDep,
    session: WriteSession,
) -> RedirectResponse:
    if form_text(form, "confirm") != "erase":
        return see_other(f"/admin/contacts/{quote(contact_id)}/erase")
    contacts.erase(session, contact_id, keys=keys, admin=admin, request=context, now=utcnow())
    return see_other(f"/admin/contacts/{quote(contact_id)}?erased=1")
