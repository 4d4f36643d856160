"""Owns who is signed in to the console: the session cookie, the dependencies that require a
live session (and, on a form post, its CSRF token), the sign-in form's own CSRF cookie, and the
device cookie of a browser that signed in before."""

from __future__ import annotations

import ipaddress
import secrets
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from prefcenter.admin import rules
from prefcenter.admin.devices import DEVICE_MAX_AGE, Device, device_cookie, read_device_cookie
from prefcenter.admin.errors import CsrfRejected, NotSignedIn
from prefcenter.admin.sessions import ActiveSession, find_session, touch_session
from prefcenter.audit.context import IPNetwork
from prefcenter.db import utcnow
from prefcenter.request_sessions import database_of
from prefcenter.settings import settings_of, signing_keys_of

SESSION_COOKIE = "prefcenter_admin"
# Before there is a session the sign-in form is protected by a double-submit token: the same
# random value in this cookie and in the form (a login CSRF would sign a victim in as us).
SIGN_IN_COOKIE = "prefcenter_admin_sign_in"
# That this browser signed in as a user before (admin.devices): only the sign-in form sees it.
DEVICE_COOKIE = "prefcenter_admin_device"
COOKIE_PATH = "/admin"
SIGN_IN_PATH = "/admin/sign-in"
SIGN_IN_COOKIE_MAX_AGE = 3600
CSRF_FIELD = "csrf_token"
MAX_FORM_FIELDS = 50
MAX_FORM_PART_BYTES = 64 * 1024


def _peer_is_trusted_proxy(request: Request) -> bool:
    trusted: tuple[IPNetwork, ...] = request.app.state.trusted_proxies
    if request.client is None or not trusted:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(peer in network for network in trusted)


def is_https(request: Request) -> bool:
    forwarded = (
        request.headers.get("x-forwarded-proto") if _peer_is_trusted_proxy(request) else None
    )
    return rules.cookie_secure(
        base_url=settings_of(request).base_url,
        scheme=request.url.scheme,
        forwarded_proto=forwarded,
    )


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    """No Max-Age: the cookie goes when the browser closes; the server ends it sooner
    (idle and absolute expiry) whatever the browser keeps."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=is_https(request)
    )


def sign_in_token(request: Request) -> str:
    """The sign-in form's token: the browser's current one, or a new one."""
    current = request.cookies.get(SIGN_IN_COOKIE, "")
    if 32 <= len(current) <= 64 and current.replace("-", "").replace("_", "").isalnum():
        return current
    return secrets.token_urlsafe(32)


def set_sign_in_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        path=SIGN_IN_PATH,
        max_age=SIGN_IN_COOKIE_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_sign_in_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SIGN_IN_COOKIE,
        path=SIGN_IN_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def known_device(request: Request, *, now: datetime) -> Device | None:
    """The device the browser's device cookie proves, or None (none, forged, or expired)."""
    return read_device_cookie(signing_keys_of(request), request.cookies.get(DEVICE_COOKIE), now=now)


def set_device_cookie(response: Response, request: Request, device: Device, now: datetime) -> None:
    """Issued afresh at each password sign-in, for as long as the server believes it;
    Strict, so no other site's form ever sends it along."""
    response.set_cookie(
        DEVICE_COOKIE,
        device_cookie(signing_keys_of(request), device, now=now),
        path=SIGN_IN_PATH,
        max_age=int(DEVICE_MAX_AGE.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


async def _form(request: Request) -> FormData:
    """The posted form (URL-encoded or multipart without files); anything else is empty."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return await request.form(
            max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_PART_BYTES
        )
    return FormData()


Form = Annotated[FormData, Depends(_form)]


def form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def check_sign_in_csrf(request: Request, form: FormData) -> None:
    if not rules.csrf_matches(request.cookies.get(SIGN_IN_COOKIE, ""), form_text(form, CSRF_FIELD)):
        raise CsrfRejected(
            "The sign-in form has expired or did not come from this console. "
            "Open the sign-in page again and retry."
        )


def _signed_in(request: Request) -> ActiveSession:
    """The live session, or NotSignedIn (a 303 to the sign-in page). Its own short
    transactions, like the API's key lookup; `last_seen_at` is written at most once a minute."""
    database = database_of(request)
    now = utcnow()
    with database.transaction(write=False) as session:
        active = find_session(session, request.cookies.get(SESSION_COOKIE), now=now)
    if active is None:
        raise NotSignedIn("Sign in to use the admin console.")
    if active.needs_touch:
        with database.transaction(write=True) as session:
            touch_session(session, active.id, now=now)
    return active


def _signed_in_post(
    active: Annotated[ActiveSession, Depends(_signed_in)], form: Form
) -> ActiveSession:
    """A form post of a live session carrying that session's CSRF token; refused before any
    transaction of the handler opens, so a refused post changes nothing."""
    if not rules.csrf_matches(active.csrf_secret, form_text(form, CSRF_FIELD)):
        raise CsrfRejected(
            "This form has expired or did not come from this console; nothing was changed. "
            "Go back, reload the page and try again."
        )
    return active


SignedIn = Annotated[ActiveSession, Depends(_signed_in)]
SignedInPost = Annotated[ActiveSession, Depends(_signed_in_post)]
