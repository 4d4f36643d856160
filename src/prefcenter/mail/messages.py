"""Owns how the service's mail is written: Jinja templates in English and German (the recipient
pages' Babel catalogs), a plain-text and an HTML part, and the headers every mail carries.

A message is two templates, `NAME.txt` and `NAME.html`. The text one starts with a
`Subject: …` line and a blank line. No image, no remote resource, no tracking of any kind:
the HTML is the text, formatted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from prefcenter.templating import translations

TEMPLATES_DIR = Path(__file__).parent / "templates"
_SUBJECT = "Subject:"


class TemplateBroken(Exception):
    """A mail template does not start with its `Subject:` line (a bug of the package)."""


@dataclass(frozen=True, slots=True)
class Written:
    subject: str
    text: str
    html: str


class MailTemplates:
    """Renders mail templates in a language: the text part without escaping, the HTML part with
    autoescaping. Environments are built once per language."""

    def __init__(self, template_dir: Path = TEMPLATES_DIR) -> None:
        self._loader = FileSystemLoader(str(template_dir))
        self._environments: dict[tuple[str, bool], Environment] = {}

    def _environment(self, language: str, *, html: bool) -> Environment:
        environment = self._environments.get((language, html))
        if environment is None:
            environment = Environment(
                loader=self._loader,
                # The text part is plain text, escaped for nothing; the HTML part escapes.
                autoescape=html,  # noqa: S701
                undefined=StrictUndefined,
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
                keep_trailing_newline=True,
                auto_reload=False,
            )
            environment.install_gettext_translations(  # type: ignore[attr-defined]
                translations(language), newstyle=True
            )
            self._environments[(language, html)] = environment
        return environment

    def write(self, name: str, language: str, context: dict[str, Any]) -> Written:
        values = {"lang": language, **context}
        text = self._environment(language, html=False).get_template(f"{name}.txt").render(values)
        html = self._environment(language, html=True).get_template(f"{name}.html").render(values)
        head, _, body = text.partition("\n\n")
        if not head.startswith(_SUBJECT):
            raise TemplateBroken(f"{name}.txt must start with a Subject: line")
        # One line whatever the template or a topic's name held: a header cannot break.
        subject = " ".join(head[len(_SUBJECT) :].split())
        return Written(subject=subject, text=body.strip() + "\n", html=html)


def compose(
    written: Written,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    date: datetime,
    language: str,
) -> Message:
    """The message: multipart/alternative (text, then HTML, both UTF-8 quoted-printable), with
    the headers that say it is automatic (RFC 3834 `Auto-Submitted`; Exchange's
    `X-Auto-Response-Suppress`) so that out-of-office replies stay away.

    Built with the `email` package's classic classes, several times faster to build and to
    write out than `EmailMessage` (whose header objects cost milliseconds a mail), so every
    header value is checked here instead: a line break in one raises ValueError, whatever a
    template, a name or an address holds. `sender` is ASCII already (mail.config encodes a
    name); an address with a non-ASCII local part would need SMTPUTF8 and is refused.
    """
    message = MIMEMultipart("alternative")
    message["From"] = _plain(sender)
    message["To"] = _plain(_ascii_address(recipient))
    # typeshed says str; a Header is what the generator folds without breaking its words.
    message["Subject"] = _encoded(written.subject)  # type: ignore[assignment]
    message["Date"] = format_datetime(date)
    message["Message-ID"] = _plain(message_id)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["Content-Language"] = _plain(language)
    message.attach(_text_part(written.text, "plain"))
    message.attach(_text_part(written.html, "html"))
    return message


def _text_part(text: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, _UTF8_QP)
    return part


_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP
_BREAKS = frozenset("\r\n\x00")


def _plain(value: str) -> str:
    if not value.isascii() or any(ch in _BREAKS for ch in value):
        raise ValueError("a header value must be one line of ASCII")
    return value


def _encoded(value: str) -> str | Header:
    """A text header (the subject): RFC 2047 when it is not ASCII (a Header, which the
    generator folds correctly)."""
    if any(ch in _BREAKS for ch in value):
        raise ValueError("a header value must be one line")
    return value if value.isascii() else Header(value, "utf-8", header_name="Subject")


def _ascii_address(address: str) -> str:
    """An address for a header and the envelope: an internationalised domain as its ASCII
    (IDNA) form; a non-ASCII local part cannot be written without SMTPUTF8."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise ValueError("the local part is not ASCII (SMTPUTF8 is not supported)")
    return f"{local}@{domain.encode('idna').decode('ascii') if not domain.isascii() else domain}"
