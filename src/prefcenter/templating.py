"""Owns server-rendered HTML: Jinja2 with autoescaping, Babel translations, the language of a
request, and the headers every page for a recipient carries."""

from __future__ import annotations

import gettext
import io
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from babel import Locale, negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import escape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOCALES_DIR = Path(__file__).parent / "locales"
DEFAULT_LANGUAGE = "en"
SUPPORTED_LANGUAGES = ("en", "de")
MAX_ACCEPT_LANGUAGE = 512

# For pages shown to recipients: nothing cached, nothing leaked onward, nothing framed, no
# script at all, forms only back to us.
RECIPIENT_PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Permissions-Policy": "interest-cohort=()",
}

# The same, as ASGI header pairs.
RECIPIENT_PAGE_HEADER_PAIRS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in RECIPIENT_PAGE_HEADERS.items()
)


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of one language, compiled in memory from its .po file (no build step)."""
    po_path = LOCALES_DIR / language / "LC_MESSAGES" / "messages.po"
    if not po_path.exists():
        return gettext.NullTranslations()
    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def negotiate_language(query_lang: str | None, accept_language: str | None) -> str:
    """`?lang=` wins when it names a supported language, then Accept-Language, then English."""
    if query_lang and query_lang.lower() in SUPPORTED_LANGUAGES:
        return query_lang.lower()
    if accept_language:
        preferred = _parse_accept_language(accept_language[:MAX_ACCEPT_LANGUAGE])
        found = negotiate_locale(preferred, SUPPORTED_LANGUAGES, sep="-")
        if found:
            return found.split("-", 1)[0].lower()
    return DEFAULT_LANGUAGE


def _parse_accept_language(header: str) -> list[str]:
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*" or len(tag) > 35:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, index, tag))
    ordered = [tag for _, _, tag in sorted(weighted)]
    # "de-AT" should also match a plain "de" catalog.
    return ordered + [t.split("-", 1)[0] for t in ordered if "-" in t]


class Pages:
    """Renders a package's templates in the request's language."""

    def __init__(self, template_dirs: Iterable[Path]) -> None:
        self._loader = ChoiceLoader([FileSystemLoader(str(d)) for d in template_dirs])
        self._environments: dict[str, Environment] = {}
        self._frames: dict[tuple[Any, ...], _Frame] = {}

    def environment(self, language: str) -> Environment:
        environment = self._environments.get(language)
        if environment is None:
            environment = Environment(
                loader=self._loader,
                autoescape=select_autoescape(default=True, default_for_string=True),
                undefined=StrictUndefined,
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
                # Templates ship with the package: no stat() of every template per render.
                auto_reload=False,
            )
            environment.install_gettext_translations(  # type: ignore[attr-defined]
                translations(language), newstyle=True
            )
            self._environments[language] = environment
        return environment

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        language = language_of(request)
        body = self.render_text(language, template, context)
        response_headers = {**RECIPIENT_PAGE_HEADERS, "Content-Language": language}
        if headers:
            response_headers.update(headers)
        return HTMLResponse(body, status_code=status_code, headers=response_headers)

    def render_text(self, language: str, template: str, context: Mapping[str, Any]) -> str:
        return (
            self.environment(language)
            .get_template(template)
            .render(
                lang=language,
                text_direction=Locale.parse(language).text_direction,
                languages=SUPPORTED_LANGUAGES,
                **context,
            )
        )

    def render_fast(
        self,
        language: str,
        template: str,
        texts: Mapping[str, str | None],
        fixed: Mapping[str, Hashable] | None = None,
    ) -> str:
        """What `render_text(language, template, {**texts, **fixed})` gives, from a frame
        rendered once: the page with a marker where each non-empty value of `texts` goes,
        kept per language, template, `fixed` values and which `texts` are empty. Filling
        it is joining strings, where Jinja's render with its translations costs a few hundred
        µs: for the pages of the hottest path (unsubscribe links).

        For templates that only print a text value, escaped, or test whether it is empty
        (tests/test_templating.py checks each one used against `render_text`).
        """
        fixed = fixed or {}
        key = (
            language,
            template,
            tuple(sorted(fixed.items())),
            # An empty text is printed as it is: "" and None differ.
            tuple(sorted((name, value if not value else True) for name, value in texts.items())),
        )
        frame = self._frames.get(key)
        if frame is None:
            marked = {
                name: f"{_MARK_START}{name}{_MARK_END}" if value else value
                for name, value in texts.items()
            }
            pieces = _MARKER.split(self.render_text(language, template, {**marked, **fixed}))
            frame = _Frame(constant=tuple(pieces[0::2]), slots=tuple(pieces[1::2]))
            self._frames[key] = frame
        return frame.fill(texts)


# Private-use characters: escaping leaves them as they are, and no template contains them.
_MARK_START = "\ue000"
_MARK_END = "\ue001"
_MARKER = re.compile(f"{_MARK_START}(\\w+){_MARK_END}")


@dataclass(frozen=True, slots=True)
class _Frame:
    constant: tuple[str, ...]  # one more than slots: the text before, between and after them
    slots: tuple[str, ...]

    def fill(self, texts: Mapping[str, str | None]) -> str:
        parts = [self.constant[0]]
        for slot, after in zip(self.slots, self.constant[1:], strict=True):
            parts.append(escape(texts[slot]))
            parts.append(after)
        return "".join(parts)


def language_of(request: Request) -> str:
    return negotiate_language(
        request.query_params.get("lang"), request.headers.get("accept-language")
    )


class RecipientPageHeaders:
    """Adds RECIPIENT_PAGE_HEADERS to every answer under the recipient paths, whatever
    produced it (a page, a 405, a 413 or a 503 problem), and drops any Set-Cookie."""

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes
        self._headers = list(RECIPIENT_PAGE_HEADER_PAIRS)
        self._names = {name for name, _ in self._headers} | {b"set-cookie"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(n, v) for n, v in message.get("headers", []) if n not in self._names]
                message = {**message, "headers": [*kept, *self._headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def keep_language(request: Request, path: str) -> str:
    """`path` with the page's explicit `?lang=` kept, so a form's answer stays in the language
    the person picked (without it, Accept-Language decides again)."""
    return with_language(request.query_params.get("lang"), path)


def with_language(query_lang: str | None, path: str) -> str:
    """`keep_language` from the value of `?lang=` (None: none given)."""
    lang = (query_lang or "").lower()
    return f"{path}?lang={lang}" if lang in SUPPORTED_LANGUAGES else path
