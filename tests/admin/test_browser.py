"""The admin console in a real browser: Debian's chromium driven by Playwright against a real
`prefcenter serve`, on SQLite and PostgreSQL.

Sign in, find a contact, record a support-desk opt-out with its reason and see it in the
timeline; a form posted without its CSRF token is refused. No page runs or needs script (the
CSP would report any attempt as a console error, which fails the test). Screenshots go to
`test-output/screenshots/`. With `PREFCENTER_REFRESH_SCREENSHOTS=1` the contact page of the
SQLite run also replaces `docs/screenshots/admin-contact.png` (the README's picture); without
it the run writes nothing inside the checkout but `test-output/`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.admin.console import PASSWORD, create_user
from tests.support.factories import row_counts
from tests.support.harness import make_settings
from tests.support.live_server import LiveServer, fresh_database_url, issue_live_key, live_server
from tests.support.real_browser import Watch, launch_chromium

pytestmark = pytest.mark.slow

ENGINES = ("sqlite", "postgresql")
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-output" / "screenshots"
COMMITTED_SCREENSHOT = REPO / "docs" / "screenshots" / "admin-contact.png"
VIEWPORT: ViewportSize = {"width": 1600, "height": 900}
NEWSLETTER = "Monthly newsletter"
REASON = "Phoned the desk on 25 Nov and asked for no more newsletters"


@dataclass(frozen=True, slots=True)
class Live:
    engine: str
    server: LiveServer
    database: Database
    api: httpx.Client

    def subscribe(self, email: str) -> str:
        answer = self.api.post(
            "/v1/consents",
            json={
                "email": email,
                "topic": "newsletter",
                "status": "subscribed",
                "source": "signup_form",
                "evidence": {"form": "newsletter-box v3"},
            },
        )
        assert answer.status_code == 200, answer.text
        contact_id: str = answer.json()["contact_id"]
        return contact_id

    def contact(self, contact_id: str) -> dict[str, Any]:
        answer = self.api.get(f"/v1/contacts/{contact_id}")
        assert answer.status_code == 200, answer.text
        contact: dict[str, Any] = answer.json()
        return contact


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture(scope="module", params=ENGINES)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    engine: str = request.param
    tmp = tmp_path_factory.mktemp(f"admin-browser-{engine}")
    url = fresh_database_url(request, engine, tmp)
    headers = issue_live_key(url, Scope.ADMIN, name="browser")
    database = Database(make_settings(url))
    create_user(database, "desk")
    try:
        with (
            live_server(url, log_dir=tmp) as server,
            httpx.Client(base_url=server.base_url, headers=headers, timeout=30.0) as api,
        ):
            answer = api.put(
                "/v1/topics/newsletter",
                json={"name": NEWSLETTER, "kind": "marketing", "consent": "opt_in"},
            )
            assert answer.status_code == 201, answer.text
            yield Live(engine=engine, server=server, database=database, api=api)
    finally:
        database.dispose()


@contextmanager
def console(browser: Browser, live: Live, *, expected_error: str | None = None) -> Iterator[Page]:
    """A fresh browser context, signed in as `desk` through the sign-in form. On leaving: no
    console error (a CSP violation is one) but one containing `expected_error` (chromium logs
    every 4xx answer), and nothing fetched from anywhere else."""
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=True)
    watch = Watch()
    try:
        page = context.new_page()
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        page.on("request", watch.on_request)
        page.goto(f"{live.server.base_url}/admin")
        assert page.url == f"{live.server.base_url}/admin/sign-in"
        page.get_by_label("Username").fill("desk")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("heading", name="Admin console")).to_be_visible()
        (cookie,) = [c for c in context.cookies() if c["name"] == "prefcenter_admin"]
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/admin"
        assert cookie["secure"] is False  # plain http on loopback
        yield page
        assert [e for e in watch.errors if not (expected_error and expected_error in e)] == []
        foreign = [u for u in watch.requests if not u.startswith(f"{live.server.base_url}/")]
        assert foreign == []
    finally:
        context.close()


def new_address() -> str:
    return f"ada.{uuid.uuid4().hex[:10]}@example.com"


def test_a_support_desk_opt_out_lands_in_the_timeline(browser: Browser, live: Live) -> None:
    email = new_address()
    contact_id = live.subscribe(email)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with console(browser, live) as page:
        page.get_by_label("Address or contact id").fill(email.upper())
        page.get_by_role("button", name="Find contact").click()
        expect(page.get_by_role("heading", name=f"Contact {email}")).to_be_visible()
        assert page.url == f"{live.server.base_url}/admin/contacts/{contact_id}"
        subscriptions = page.get_by_role("table").filter(has_text="Source").first
        expect(subscriptions.get_by_role("row").nth(1)).to_contain_text("subscribed")

        page.get_by_label("Topic").select_option("newsletter")
        page.get_by_label("Unsubscribed (opt-out)").check()
        page.get_by_label("The request arrived by").select_option("phone")
        page.get_by_label("Reason (required)").fill(REASON)
        page.get_by_label("Evidence (ticket, message or call reference)").fill("call #4711")
        page.get_by_role("button", name="Record the change").click()

        expect(page.get_by_role("status")).to_contain_text("The change is recorded")
        timeline = page.get_by_role("region", name="Every audit event of this contact")
        last = timeline.get_by_role("row").last
        expect(last).to_contain_text("subscribed → unsubscribed")
        expect(last).to_contain_text("admin:desk")
        expect(last).to_contain_text("phone")
        expect(last).to_contain_text(REASON)
        expect(last).to_contain_text("call #4711")
        page.screenshot(path=SCREENSHOTS / f"admin-contact-{live.engine}.png", full_page=True)
        if live.engine == "sqlite" and os.environ.get("PREFCENTER_REFRESH_SCREENSHOTS") == "1":
            page.screenshot(path=COMMITTED_SCREENSHOT, full_page=True)

    contact = live.contact(contact_id)
    assert contact["subscriptions"][0]["status"] == "unsubscribed"
    event = contact["events"][-1]
    assert (event["actor"], event["source"], event["reason"]) == ("admin:desk", "phone", REASON)


def test_a_form_posted_without_its_token_is_refused(browser: Browser, live: Live) -> None:
    email = new_address()
    contact_id = live.subscribe(email)

    refusal = f"status of 403 (Forbidden) ({live.server.base_url}/admin/contacts/{contact_id}/"
    with console(browser, live, expected_error=refusal) as page:
        page.goto(f"{live.server.base_url}/admin/contacts/{contact_id}")
        form = page.locator("form", has=page.get_by_role("button", name="Record the change"))
        form.locator("input[name=csrf_token]").evaluate("input => input.remove()")
        page.get_by_label("Reason (required)").fill(REASON)
        counts = row_counts(live.database)

        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Record the change").click()

        answer = navigation.value
        assert answer is not None
        assert answer.status == 403
        expect(page.get_by_role("heading", name="The form has expired")).to_be_visible()
        assert row_counts(live.database) == counts
        page.screenshot(path=SCREENSHOTS / f"admin-refused-{live.engine}.png", full_page=True)
    assert live.contact(contact_id)["subscriptions"][0]["status"] == "subscribed"


def test_signing_out_ends_the_session(browser: Browser, live: Live) -> None:
    with console(browser, live) as page:
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.goto(f"{live.server.base_url}/admin/audit")
        assert page.url == f"{live.server.base_url}/admin/sign-in"
