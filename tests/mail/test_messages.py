"""The service's mail as written, without a database: both parts, the headers every mail
carries, both languages, nothing remote, nothing a topic's name could break."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from prefcenter.mail.messages import MailTemplates, Written, compose

CONFIRM = "https://prefs.example.com/c/2.k1.payload.tag"
PREFERENCES = "https://prefs.example.com/p/2.k1.payload.tag"
QUEUED_AT = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
templates = MailTemplates()


def double_opt_in(language: str = "en", **overrides: Any) -> EmailMessage:
    context: dict[str, Any] = {
        "organization": "Example Shop",
        "topic_name": "Monthly newsletter",
        "confirm_url": CONFIRM,
        "preferences_url": PREFERENCES,
        "link_days": 7,
        **overrides,
    }
    written = templates.write("double_opt_in", language, context)
    message = compose(
        written,
        sender="Example Shop <news@example.com>",
        recipient="ada@example.com",
        message_id="<abc123@example.com>",
        date=QUEUED_AT,
        language=language,
    )
    # What a receiver parses: the bytes, not the object.
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


class TestDoubleOptIn:
    def test_headers_of_an_automatic_mail(self) -> None:
        message = double_opt_in()
        assert message["From"] == "Example Shop <news@example.com>"
        assert message["To"] == "ada@example.com"
        assert message["Message-ID"] == "<abc123@example.com>"
        assert message["Date"].datetime == QUEUED_AT
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["Content-Language"] == "en"
        assert message["Subject"] == "Please confirm your subscription: Monthly newsletter"
        assert message.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]

    def test_both_parts_carry_the_confirmation_and_the_preference_link(self) -> None:
        text, html = parts(double_opt_in())
        for body in (text, html):
            assert CONFIRM in body
            assert PREFERENCES in body
            assert "Example Shop" in body
            assert "7 days" in body
        # The preference link is the foot of the mail, after the confirmation.
        assert text.index(PREFERENCES) > text.index(CONFIRM)
        assert "Manage your email preferences" in text.split("--")[-1]

    def test_nothing_remote_no_image_no_script(self) -> None:
        _, html = parts(double_opt_in())
        lowered = html.lower()
        for forbidden in ("<img", "<script", "<link", "<iframe", "url(", "@import", "src="):
            assert forbidden not in lowered
        # Every link goes where the mail says, and only there.
        assert set(re.findall(r'href="([^"]+)"', html)) == {CONFIRM, PREFERENCES}

    def test_german(self) -> None:
        message = double_opt_in("de")
        assert message["Subject"] == "Bitte bestätigen Sie Ihr Abonnement: Monthly newsletter"
        assert message["Content-Language"] == "de"
        text, html = parts(message)
        for body in (text, html):
            assert "Guten Tag," in body
            assert "Der Link ist 7 Tage gültig." in body
            assert "Ihre E-Mail-Einstellungen verwalten" in body
            assert "confirm" not in body.replace(CONFIRM, "")  # nothing left in English
        assert "Ja, anmelden" in html
        assert 'lang="de"' in html

    def test_one_day_is_singular(self) -> None:
        text, _ = parts(double_opt_in(link_days=1))
        assert "The link works for 1 day." in text

    def test_without_an_organization(self) -> None:
        text, _ = parts(double_opt_in(organization=None))
        assert "receive emails about Monthly newsletter at this address" in text

    def test_a_topic_name_cannot_break_a_header_or_the_html(self) -> None:
        message = double_opt_in(topic_name='News\r\nBcc: all@example.com <b onmouseover="x">')
        assert message["Bcc"] is None
        assert "\n" not in message["Subject"]
        assert "Bcc: all@example.com" in message["Subject"]  # shown as text, on one line
        _, html = parts(message)
        assert "<b onmouseover" not in html
        assert "&lt;b onmouseover=" in html


class TestTestMail:
    @pytest.mark.parametrize(
        ("language", "subject"),
        [("en", "Test email from prefcenter"), ("de", "Test-E-Mail von prefcenter")],
    )
    def test_says_where_it_comes_from(self, language: str, subject: str) -> None:
        written = templates.write(
            "test",
            language,
            {"organization": None, "preferences_url": None, "base_url": "https://p.example"},
        )
        assert written.subject == subject
        assert "https://p.example" in written.text
        assert "https://p.example" in written.html
        assert "href" not in written.html  # no preference link: it is nobody's contact


class TestHeadersAreChecked:
    def written(self) -> Written:
        return templates.write(
            "test", "en", {"organization": None, "preferences_url": None, "base_url": "x"}
        )

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("recipient", "ada@example.com\r\nBcc: all@example.com"),
            ("recipient", "ada@example.com\n"),
            ("message_id", "<a@example.com>\r\nBcc: all@example.com"),
            ("sender", "news@example.com\nBcc: all@example.com"),
            ("recipient", "äda@example.com"),
        ],
    )
    def test_a_line_break_or_a_non_ascii_address_is_refused(self, field: str, value: str) -> None:
        fields = {
            "sender": "news@example.com",
            "recipient": "ada@example.com",
            "message_id": "<a@example.com>",
        }
        fields[field] = value
        with pytest.raises(ValueError, match=r"header value|local part"):
            compose(self.written(), date=QUEUED_AT, language="en", **fields)

    def test_an_international_domain_is_written_in_its_ascii_form(self) -> None:
        message = compose(
            self.written(),
            sender="news@example.com",
            recipient="ada@bücher.example",
            message_id="<a@example.com>",
            date=QUEUED_AT,
            language="en",
        )
        assert message["To"] == "ada@xn--bcher-kva.example"
