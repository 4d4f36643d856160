"""Owns how the console answers: its templates, the page a refused request gets (an error
page, or for a missing session a 303 to sign-in)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from prefcenter.admin.access import CSRF_FIELD, SIGN_IN_PATH
from prefcenter.admin.errors import NotSignedIn
from prefcenter.admin.sessions import ActiveSession
from prefcenter.problems import Problem
from prefcenter.templating import Pages

PACKAGE_DIR = Path(__file__).parent
pages = Pages([PACKAGE_DIR / "templates"])


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    admin: ActiveSession | None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A console page; with `admin`, the navigation and a sign-out form carrying its token.

    The console is in English only, whatever the browser asks for.
    """
    return pages.render(
        request,
        template,
        {
            **context,
            "admin": admin,
            "csrf_field": CSRF_FIELD,
            "csrf_token": admin.csrf_secret if admin is not None else None,
            "path": request.url.path,
            "document_items": document_items,
        },
        status_code=status_code,
        headers={"Content-Language": "en", **(headers or {})},
    )


def document_items(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An evidence or context document as key and text pairs; nested values as JSON. The
    template escapes both, so `<script>` in a value shows as text."""
    return [
        (str(key), value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        for key, value in sorted(document.items())
    ]


def see_other(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


def error_page(request: Request, exc: Problem) -> Response:
    if isinstance(exc, NotSignedIn):
        return see_other(SIGN_IN_PATH)
    return render(
        request,
        "error.html",
        {"title": exc.title, "detail": exc.detail, "status": exc.status},
        admin=None,
        status_code=exc.status,
        headers=exc.headers,
    )


class AdminRoute(APIRoute):
    """A console route: a domain error becomes a page rather than problem JSON. It is caught
    after the request's transaction has been rolled back."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as exc:
                return error_page(request, exc)

        return answer
