"""The double-opt-in confirmation end to end: a real `prefcenter serve` (its own outbox worker
inside) mails it to a real SMTP server in this process; the mail is read with the standard
`email` package and its link followed in Debian's chromium; the subscription is then
`subscribed`, with the mail's Message-ID in its event's evidence. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from prefcenter.apikeys.schemas import Scope
from tests.support.live_server import fresh_database_url, issue_live_key, live_server
from tests.support.mail_server import SENDER, SmtpServer, smtp_server
from tests.support.real_browser import Watch, launch_chromium

pytestmark = pytest.mark.slow

ENGINES = ("sqlite", "postgresql")
TOPIC = {"name": "Events near you", "kind": "marketing", "consent": "opt_in", "double_opt_in": True}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as running:
        yield running


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


@pytest.mark.parametrize("engine", ENGINES)
def test_the_confirmation_mail_is_followed_in_a_browser(
    request: pytest.FixtureRequest,
    engine: str,
    tmp_path: Path,
    browser: Browser,
    server: SmtpServer,
) -> None:
    url = fresh_database_url(request, engine, tmp_path)
    headers = issue_live_key(url, Scope.ADMIN, name="signup-form")
    email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
    env = {
        "PREFCENTER_MAIL_URL": server.url,
        "PREFCENTER_MAIL_FROM": SENDER,
        "PREFCENTER_ORGANIZATION_NAME": "Example Shop",
        "PREFCENTER_OUTBOX_POLL_SECONDS": "0.1",
    }
    with (
        live_server(url, log_dir=tmp_path, extra_env=env) as live,
        httpx.Client(base_url=live.base_url, headers=headers, timeout=30.0) as api,
    ):
        assert api.put("/v1/topics/events", json=TOPIC).status_code == 201
        answer = api.post(
            "/v1/consents",
            json={"email": email, "topic": "events", "status": "subscribed"},
        ).json()
        assert answer["status"] == "pending"
        assert "confirm_url" not in answer or answer["confirm_url"] is None

        (mail,) = server.inbox.wait_for(1)  # sent by the worker inside `serve`
        message = mail.message()
        assert mail.rcpt_tos == (email,)
        assert message["To"] == email
        assert message["From"] == SENDER
        assert message["Auto-Submitted"] == "auto-generated"
        assert parsedate_to_datetime(message["Date"]).tzinfo is not None
        message_id = message["Message-ID"]
        assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", message_id)
        assert message.get_content_type() == "multipart/alternative"
        text, html = parts(message)
        assert "<img" not in html.lower()
        confirm = re.findall(rf'href="({re.escape(live.base_url)}/c/[^"]+)"', html)[0]
        preferences = re.findall(rf'href="({re.escape(live.base_url)}/p/[^"]+)"', html)[0]
        assert confirm in text
        assert preferences in text

        context = browser.new_context(java_script_enabled=True)
        watch = Watch()
        try:
            page = context.new_page()
            page.on("console", watch.on_console)
            page.on("request", watch.on_request)
            page.goto(confirm)
            expect(page.get_by_role("heading", name="Confirm your subscription")).to_be_visible()
            # Opening the link changes nothing: a mail scanner opens it too.
            pending = api.post("/v1/contacts/lookup", json={"emails": [email]}).json()
            assert pending["contacts"][0]["subscriptions"][0]["status"] == "pending"
            with page.expect_navigation():
                page.get_by_role("button", name="Yes, subscribe me").click()
            expect(page.get_by_role("heading", name="Subscription confirmed")).to_be_visible()
            page.goto(preferences)
            expect(page.get_by_role("heading", name="Email preferences")).to_be_visible()
        finally:
            context.close()
        assert watch.errors == []
        assert all(u.startswith(f"{live.base_url}/") for u in watch.requests)

        lookup = api.post("/v1/contacts/lookup", json={"emails": [email]}).json()
        (subscription,) = lookup["contacts"][0]["subscriptions"]
        assert subscription["status"] == "subscribed"
        events = api.get(f"/v1/contacts/{answer['contact_id']}").json()["events"]
        (confirmed,) = [e for e in events if e["source"] == "confirmation"]
        assert confirmed["to_status"] == "subscribed"
        assert confirmed["evidence"]["message_id"] == message_id
        (sent,) = [e for e in events if e["kind"] == "mail_sent"]
        assert sent["evidence"]["message_id"] == message_id
        assert api.get("/v1/audit/verify").json()["ok"] is True
