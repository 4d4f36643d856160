"""Owns how the service's mail is written: Jinja templates in English and German (the recipient
pages' Babel catalogs), a plain-text and an HTML part, and the headers every mail carries.

A message is two templates, `NAME.txt` and `NAME.html`. The text one starts with a
`Subject: …` line and a blank line. No image, no remote resource, no tracking of any kind:
the HTML is the text, formatted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
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
) -> EmailMessage:
    """The message: multipart/alternative (text, then HTML), with the headers that say it is
    automatic (RFC 3834 `Auto-Submitted`; Exchange's `X-Auto-Response-Suppress`) so that
    out-of-office replies stay away. Header values with a line break are refused by `email`
    itself, whatever a template or a name holds."""
    message = EmailMessage(policy=policy.default)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = written.subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(written.text)
    message.add_alternative(written.html, subtype="html")
    # After the parts: setting content moves every Content-* header into the first part.
    message["Content-Language"] = language
    return message
