"""The recipient pages for what goes wrong outside a page's own handler: a bad link (any
route that reads a token raises InvalidLink) and a form that did not arrive in time."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.types import Scope

from prefcenter.preference_center.errors import InvalidLink
from prefcenter.preference_center.router import pages
from prefcenter.settings import Settings, settings_of


def install_invalid_link_page(app: FastAPI) -> None:
    """A bad link gets a translated page and its status, and reveals nothing about a contact."""

    async def on_invalid_link(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, InvalidLink)
        settings = settings_of(request)
        return pages.render(
            request,
            "invalid_link.html",
            {
                "organization": settings.organization_name,
                "expired": exc.expired,
                "retired": exc.retired,
            },
            status_code=exc.status,
        )

    app.add_exception_handler(InvalidLink, on_invalid_link)


def request_timeout_page(settings: Settings, scope: Scope) -> HTMLResponse:
    """What a recipient sees when their browser's form did not arrive in time
    (http_limits.BodyTimeout): a page, not a problem document."""
    return pages.render(
        Request(scope),
        "request_timeout.html",
        {"organization": settings.organization_name},
        status_code=408,
    )
