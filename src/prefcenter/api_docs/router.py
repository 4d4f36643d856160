"""Owns `/docs` (Swagger UI): its page, its script and styles from installed packages
(fastapi-offline's copy of Swagger UI, and our own initialiser), and the headers that let no
other script run; or nothing at all when `PREFCENTER_API_DOCS` is off.

Why not the framework's pages: they load Swagger UI and ReDoc from a CDN without subresource
integrity, on the origin of `/admin`. A script the CDN served instead would run with the
console's cookies, read its pages and post its forms. ReDoc is not offered: it fetches its logo
from its vendor's CDN whatever it is told, and one interactive page is enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse
from markupsafe import escape

from prefcenter.problems import NotFound

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

# Only our own scripts and styles, and only from this origin; the fetches Swagger UI makes
# ("Try it out", the OpenAPI document) only to this origin. Its icons are data: URLs; the
# styles it sets as it renders go through the DOM, which `style-src` does not govern.
DOCS_PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_ASSET_HEADERS: Mapping[str, str] = {
    "Cache-Control": "public, max-age=86400",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_VENDORED = Path(str(files("fastapi_offline") / "static"))
_OWN = Path(__file__).parent / "static"
# Every file served under ASSETS_PATH: a fixed list, nothing else from either directory.
ASSETS: Mapping[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_VENDORED / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (_VENDORED / "swagger-ui.css", "text/css"),
    "favicon.png": (_VENDORED / "favicon.png", "image/png"),
    "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript"),
}

router = APIRouter(include_in_schema=False)


def _page(request: Request, title: str, head: str, body: str) -> HTMLResponse:
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        f'<link rel="icon" href="{_asset_url(request, "favicon.png")}">\n{head}</head>\n'
        f"<body>\n{body}</body>\n</html>\n"
    )
    return HTMLResponse(html, headers=DOCS_PAGE_HEADERS)


def _asset_url(request: Request, name: str) -> str:
    return str(escape(f"{request.scope.get('root_path', '')}{ASSETS_PATH}/{name}"))


def _openapi_url(request: Request) -> str:
    openapi_url = request.app.openapi_url or ""
    return str(escape(f"{request.scope.get('root_path', '')}{openapi_url}"))


@router.get(DOCS_PATH)
def swagger_ui(request: Request) -> HTMLResponse:
    return _page(
        request,
        f"{request.app.title} API",
        f'<link rel="stylesheet" href="{_asset_url(request, "swagger-ui.css")}">\n',
        f'<div id="swagger-ui" data-openapi-url="{_openapi_url(request)}"></div>\n'
        f'<script src="{_asset_url(request, "swagger-ui-bundle.js")}"></script>\n'
        f'<script src="{_asset_url(request, "swagger-init.js")}"></script>\n',
    )


@router.get(ASSETS_PATH + "/{name}")
def asset(name: Annotated[str, PathParam(max_length=64)]) -> FileResponse:
    found = ASSETS.get(name)
    if found is None:
        raise NotFound("The documentation has no such file.")
    path, media_type = found
    return FileResponse(path, media_type=media_type, headers=_ASSET_HEADERS)


def install_api_docs(app: FastAPI) -> None:
    """Serve `/docs`; create the app with `docs_url=None, redoc_url=None`."""
    app.include_router(router)
