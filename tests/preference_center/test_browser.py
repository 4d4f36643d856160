"""The recipient pages in a real browser: Debian's chromium driven by Playwright against a real
`prefcenter serve`, on SQLite and PostgreSQL.

What parsing HTML cannot show: a browser that renders a page, script enabled, changes nothing
(mail scanners do exactly that); the button and the checkboxes work with a mouse and with the
keyboard alone; the pages fit a phone; Accept-Language picks German. Screenshots of every page
at phone and desktop width go to `test-output/screenshots/`.

Chromium missing is a failure, never a skip (CI must not pass without these tests), unless
`PREFCENTER_SKIP_BROWSER=1` asks for the skip explicitly. `make browser` installs it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    Page,
    ViewportSize,
    expect,
)

from prefcenter.apikeys.schemas import Scope
from prefcenter.db import Database
from tests.support.factories import row_counts
from tests.support.harness import make_settings
from tests.support.live_server import LiveServer, fresh_database_url, issue_live_key, live_server
from tests.support.real_browser import Watch, launch_chromium

pytestmark = pytest.mark.slow

ENGINES = ("sqlite", "postgresql")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
VIEWPORTS: dict[str, ViewportSize] = {
    "phone": {"width": 375, "height": 740},
    "desktop": {"width": 1024, "height": 720},
}
# How long a "scanner" lingers on a rendered page before we look for changes.
SCANNER_DWELL_MS = 1000
ORGANIZATION = "Example Shop"
MASKED = "a•••@example.com"  # every address below starts with "a" at example.com
POLICY_VERSION = "2026-01"
POLICY_URL = "https://example.org/privacy/2026-01"
POLICY_LINE = f"version {POLICY_VERSION}, in force since 2026-01-05"

NEWSLETTER = "Monthly newsletter"
PRODUCT_NEWS = "Product news"
OFFERS = "Offers and discounts"
EVENTS = "Events near you"
TOPICS: dict[str, dict[str, Any]] = {
    "newsletter": {
        "name": NEWSLETTER,
        "description": "Our best articles, once a month.",
        "kind": "marketing",
        "consent": "opt_in",
    },
    "product-news": {"name": PRODUCT_NEWS, "kind": "marketing", "consent": "opt_in"},
    "offers": {
        "name": OFFERS,
        "description": "At most one email a week.",
        "kind": "marketing",
        "consent": "opt_out",
    },
    "events": {
        "name": EVENTS,
        "kind": "marketing",
        "consent": "opt_in",
        "double_opt_in": True,
    },
    "receipts": {"name": "Receipts", "kind": "transactional", "consent": "opt_out"},
    "partner-analytics": {
        "name": "Shopping insights",
        "description": "They study what sells, never to send you mail.",
        "kind": "sharing",
        "consent": "opt_in",
        "third_party": "Acme Analytics Ltd",
    },
}
# In page order: the marketing topics, then "Sharing with others".
CHECKBOX_IDS = [
    "topic-events",
    "topic-newsletter",
    "topic-offers",
    "topic-product-news",
    "topic-partner-analytics",
]


@dataclass(frozen=True, slots=True)
class Live:
    """One server per engine for the module; tests keep apart by using addresses of their own."""

    engine: str
    server: LiveServer
    database: Database
    api: httpx.Client

    def subscribe(self, email: str, *topics: str) -> None:
        for topic in topics:
            response = self.api.post(
                "/v1/consents",
                json={
                    "email": email,
                    "topic": topic,
                    "status": "subscribed",
                    "source": "signup_form",
                },
            )
            assert response.status_code == 200, response.text

    def issue_links(
        self, email: str, topic: str | None = None, campaign_id: str | None = None
    ) -> dict[str, Any]:
        """`POST /v1/links`, as a mail tool does before a send."""
        body: dict[str, Any] = {"email": email}
        if topic is not None:
            body["topic"] = topic
        if campaign_id is not None:
            body["campaign_id"] = campaign_id
        response = self.api.post("/v1/links", json=body)
        assert response.status_code == 200, response.text
        links: dict[str, Any] = response.json()
        assert links["unsubscribe_url"].startswith(f"{self.server.base_url}/u/")
        assert links["preferences_url"].startswith(f"{self.server.base_url}/p/")
        return links

    def lookup(self, email: str) -> dict[str, Any]:
        response = self.api.post("/v1/contacts/lookup", json={"emails": [email]})
        assert response.status_code == 200, response.text
        (contact,) = response.json()["contacts"]
        assert isinstance(contact, dict)
        return contact

    def statuses(self, email: str) -> dict[str, str]:
        return {s["topic"]: s["status"] for s in self.lookup(email)["subscriptions"]}

    def events(self, contact_id: str) -> list[dict[str, Any]]:
        response = self.api.get(f"/v1/contacts/{contact_id}")
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One chromium for the whole module."""
    with launch_chromium() as launched:
        yield launched


@pytest.fixture(scope="module", params=ENGINES)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    engine: str = request.param
    tmp = tmp_path_factory.mktemp(f"browser-{engine}")
    url = fresh_database_url(request, engine, tmp)
    headers = issue_live_key(url, Scope.ADMIN, name="browser")
    database = Database(make_settings(url))
    try:
        with (
            live_server(
                url, log_dir=tmp, extra_env={"PREFCENTER_ORGANIZATION_NAME": ORGANIZATION}
            ) as server,
            httpx.Client(base_url=server.base_url, headers=headers, timeout=30.0) as api,
        ):
            for key, body in TOPICS.items():
                response = api.put(f"/v1/topics/{key}", json=body)
                assert response.status_code == 201, response.text
            publish_policy(api)
            yield Live(engine=engine, server=server, database=database, api=api)
    finally:
        database.dispose()


def publish_policy(api: httpx.Client) -> None:
    """The privacy policy in force, which both pages name."""
    response = api.put(
        "/v1/notices/privacy", json={"name": "Privacy policy", "kind": "privacy_policy"}
    )
    assert response.status_code == 201, response.text
    response = api.post(
        "/v1/notices/privacy/versions",
        json={
            "version": POLICY_VERSION,
            "language": "en",
            "url": POLICY_URL,
            "sha256": hashlib.sha256(b"Our privacy policy.").hexdigest(),
            "effective_at": "2026-01-05T09:00:00Z",
            "material": False,
            "summary": "The first version.",
            "reason": "The first version, in force before the service kept notices.",
        },
    )
    assert response.status_code == 201, response.text


def new_address() -> str:
    return f"ada.{uuid.uuid4().hex[:10]}@example.com"


@contextmanager
def open_page(
    browser: Browser, live: Live, *, viewport: str = "desktop", locale: str = "en-US"
) -> Iterator[Page]:
    """A fresh context (no cookies, no cache) with JavaScript on, as a scanner or a person
    would have it. On leaving: no console error, nothing fetched from anywhere but the server,
    and no cookie set."""
    context = browser.new_context(
        viewport=VIEWPORTS[viewport], locale=locale, java_script_enabled=True
    )
    watch = Watch()
    try:
        page = context.new_page()
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        page.on("request", watch.on_request)
        yield page
        assert watch.errors == []
        assert watch.requests
        foreign = [u for u in watch.requests if not u.startswith(f"{live.server.base_url}/")]
        assert foreign == []
        assert context.cookies() == []
    finally:
        context.close()


def goto(page: Page, url: str, *, settle: bool = False) -> None:
    """Open `url`; with `settle`, also wait until the network has been idle for 500 ms."""
    response = page.goto(url, wait_until="networkidle" if settle else "load")
    assert response is not None
    assert response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert "set-cookie" not in response.headers


def no_horizontal_scroll(page: Page) -> bool:
    fits = page.evaluate(
        "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert isinstance(fits, bool)
    return fits


def last_event(live: Live, contact_id: str) -> dict[str, Any]:
    return live.events(contact_id)[-1]


class TestUnsubscribePage:
    def test_rendering_with_javascript_changes_nothing(self, browser: Browser, live: Live) -> None:
        """A link scanner that renders the page (and the preference page it links to), runs
        its script and lingers, unsubscribes nobody."""
        email = new_address()
        live.subscribe(email, "newsletter")
        links = live.issue_links(email, topic="newsletter")
        counts = row_counts(live.database)
        contact = live.lookup(email)

        def assert_nothing_changed() -> None:
            assert row_counts(live.database) == counts
            assert live.lookup(email) == contact

        with open_page(browser, live) as page:
            goto(page, links["unsubscribe_url"], settle=True)
            page.wait_for_timeout(SCANNER_DWELL_MS)
            assert_nothing_changed()
            expect(page.get_by_role("button", name="Unsubscribe")).to_be_visible()
            assert page.locator("script").count() == 0

            # The unsubscribe token opens nothing else: the page points to the preference link
            # of the person's mail instead of linking to it.
            assert page.locator("a[href*='/p/'], a[href*='/u/']").count() == 0
            expect(page.get_by_text("use the preferences link at the foot")).to_be_visible()
        assert live.statuses(email) == {"newsletter": "subscribed"}

    def test_clicking_the_button_unsubscribes_with_the_page_as_source(
        self, browser: Browser, live: Live
    ) -> None:
        email = new_address()
        live.subscribe(email, "newsletter", "product-news")
        links = live.issue_links(email, topic="newsletter", campaign_id="spring-sale")
        events_before = len(live.events(links["contact_id"]))

        with open_page(browser, live) as page:
            goto(page, links["unsubscribe_url"])
            expect(page.get_by_text(f"Stop emails about {NEWSLETTER} to {MASKED}?")).to_be_visible()
            with page.expect_navigation() as navigation:
                page.get_by_role("button", name="Unsubscribe").click()
            answer = navigation.value
            assert answer is not None
            assert answer.status == 200
            assert answer.request.method == "POST"
            assert answer.request.redirected_from is None
            assert page.url == links["unsubscribe_url"]
            expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
            expect(page.get_by_role("status")).to_have_text(
                f"{MASKED} will get no more emails about {NEWSLETTER}. This takes effect now."
            )
            user_agent = page.evaluate("() => navigator.userAgent")

            assert live.statuses(email) == {
                "newsletter": "unsubscribed",
                "product-news": "subscribed",
            }
            events = live.events(links["contact_id"])
            assert len(events) == events_before + 1
            event = events[-1]
            assert event["source"] == "unsubscribe_page"
            assert event["topic"] == "newsletter"
            assert (event["from_status"], event["to_status"]) == ("subscribed", "unsubscribed")
            assert event["actor"] == "recipient"
            assert event["campaign_id"] == "spring-sale"
            assert event["evidence"]["channel"] == "unsubscribe_page"
            assert event["evidence"]["user_agent"] == user_agent

            # Back and click again (an impatient person): the same page, and the attempt is
            # on record as changing nothing.
            page.go_back()
            page.get_by_role("button", name="Unsubscribe").click()
            expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
        events = live.events(links["contact_id"])
        assert [e["outcome"] for e in events[events_before:]] == ["applied", "unchanged"]
        assert live.statuses(email)["newsletter"] == "unsubscribed"


class TestPreferenceCenter:
    def test_turning_a_topic_off_then_on_again_needs_the_mailbox(
        self, browser: Browser, live: Live
    ) -> None:
        email = new_address()
        live.subscribe(email, "newsletter", "product-news")
        links = live.issue_links(email)
        contact_id: str = links["contact_id"]

        with open_page(browser, live) as page:
            goto(page, links["preferences_url"])
            expect(page.get_by_text(f"For {MASKED}")).to_be_visible()
            expect(page.get_by_label(NEWSLETTER)).to_be_checked()
            expect(page.get_by_label(PRODUCT_NEWS)).to_be_checked()
            expect(page.get_by_label(OFFERS)).to_be_checked()  # opt-out topic, never refused
            expect(page.get_by_label(EVENTS)).not_to_be_checked()
            expect(page.get_by_label("Receipts")).to_have_count(0)  # transactional: not here

            page.get_by_label(NEWSLETTER).uncheck()
            page.get_by_role("button", name="Save my choices").click()
            expect(page.get_by_text("Your choices are saved and take effect now.")).to_be_visible()
            expect(page.get_by_label(NEWSLETTER)).not_to_be_checked()
            assert live.statuses(email) == {
                "newsletter": "unsubscribed",
                "product-news": "subscribed",
            }
            event = last_event(live, contact_id)
            assert (event["topic"], event["to_status"]) == ("newsletter", "unsubscribed")
            assert event["source"] == "preference_center"
            events_after_off = len(live.events(contact_id))

            # Turning it back on would reverse the person's own opt-out: not from a link.
            page.get_by_label(NEWSLETTER).check()
            page.get_by_role("button", name="Save my choices").click()
            expect(page.get_by_text(f"{NEWSLETTER} stay off")).to_be_visible()
            expect(page.get_by_label(NEWSLETTER)).not_to_be_checked()
            assert live.statuses(email) == {
                "newsletter": "unsubscribed",
                "product-news": "subscribed",
            }
            assert len(live.events(contact_id)) == events_after_off

            # A fresh GET shows what is stored, not what the form last sent.
            goto(page, links["preferences_url"])
            expect(page.get_by_label(NEWSLETTER)).not_to_be_checked()
            expect(page.get_by_text("Your choices are saved")).to_have_count(0)

    def test_a_double_opt_in_topic_waits_for_confirmation(
        self, browser: Browser, live: Live
    ) -> None:
        email = new_address()
        links = live.issue_links(email)
        with open_page(browser, live) as page:
            goto(page, links["preferences_url"])
            page.get_by_label(EVENTS).check()
            page.get_by_role("button", name="Save my choices").click()
            expect(
                page.get_by_text(f"Almost done: we will email you a link to confirm {EVENTS}.")
            ).to_be_visible()
            expect(page.get_by_text("awaiting your confirmation")).to_be_visible()
        assert live.statuses(email) == {"events": "pending"}

    def test_unsubscribe_from_all_suppresses(self, browser: Browser, live: Live) -> None:
        email = new_address()
        live.subscribe(email, "newsletter")
        links = live.issue_links(email)
        assert live.lookup(email)["suppressed"] is False

        with open_page(browser, live) as page:
            goto(page, links["preferences_url"])
            page.get_by_role("button", name="Unsubscribe from all marketing emails").click()
            expect(
                page.get_by_text("You are unsubscribed from all marketing emails.")
            ).to_be_visible()

        assert live.lookup(email)["suppressed"] is True
        event = last_event(live, links["contact_id"])
        assert event["topic"] is None
        assert event["source"] == "preference_center"
        assert event["to_status"] == "unsubscribed"

    def test_works_with_the_keyboard_alone(self, browser: Browser, live: Live) -> None:
        """Tab reaches every checkbox and both buttons, each with a visible focus ring; Space
        ticks a box and Enter saves."""
        email = new_address()
        links = live.issue_links(email)

        with open_page(browser, live) as page:
            goto(page, links["preferences_url"])
            # Labels are tied to their boxes, and a topic's description is the box's description.
            expect(page.get_by_role("checkbox", name=NEWSLETTER)).to_have_accessible_description(
                "Our best articles, once a month."
            )
            for key in ("newsletter", "product-news", "offers", "events"):
                expect(page.get_by_label(TOPICS[key]["name"], exact=True)).to_have_attribute(
                    "id", f"topic-{key}"
                )

            page.keyboard.press("Tab")
            expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
            reached: list[str] = []
            for _ in range(len(CHECKBOX_IDS) + 2):
                page.keyboard.press("Tab")
                focused = page.evaluate(
                    """() => {
                        const el = document.activeElement;
                        const style = getComputedStyle(el);
                        return {
                            name: el.id || el.textContent.trim(),
                            visible: el.matches(":focus-visible")
                                && style.outlineStyle !== "none"
                                && parseFloat(style.outlineWidth) >= 2,
                        };
                    }"""
                )
                assert focused["visible"], focused
                reached.append(focused["name"])
            assert reached == [
                *CHECKBOX_IDS,
                "Save my choices",
                "Unsubscribe from all marketing emails",
            ]

            goto(page, links["preferences_url"])
            page.keyboard.press("Tab")  # the skip link
            page.keyboard.press("Tab")  # Events near you
            page.keyboard.press("Tab")  # Monthly newsletter
            expect(page.get_by_label(NEWSLETTER)).to_be_focused()
            page.keyboard.press("Space")
            expect(page.get_by_label(NEWSLETTER)).to_be_checked()
            for _ in range(len(CHECKBOX_IDS) - 1):
                page.keyboard.press("Tab")
            expect(page.get_by_role("button", name="Save my choices")).to_be_focused()
            page.keyboard.press("Enter")
            expect(page.get_by_text("Your choices are saved and take effect now.")).to_be_visible()
        assert live.statuses(email) == {"newsletter": "subscribed"}


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_pages_fit_the_screen_and_are_captured(browser: Browser, live: Live, viewport: str) -> None:
    """Unsubscribe page, its confirmation and the preference center: no horizontal scrolling,
    the button inside the screen; a screenshot of each."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    email = new_address()
    live.subscribe(email, "newsletter", "product-news")
    links = live.issue_links(email, topic="newsletter")
    width = VIEWPORTS[viewport]["width"]

    def capture(page: Page, name: str) -> None:
        assert no_horizontal_scroll(page), f"{name} scrolls sideways at {width}px"
        page.screenshot(path=SCREENSHOTS / f"{name}-{viewport}-{live.engine}.png", full_page=True)

    with open_page(browser, live, viewport=viewport) as page:
        goto(page, links["preferences_url"])
        sharing = page.get_by_role("group", name="Sharing with others")
        expect(sharing).to_be_visible()
        expect(sharing.get_by_role("checkbox", name="Shopping insights")).not_to_be_checked()
        expect(sharing.get_by_text("Shared with Acme Analytics Ltd.")).to_be_visible()
        expect(page.get_by_text(POLICY_LINE)).to_be_visible()
        expect(page.get_by_role("link", name="Privacy policy")).to_have_attribute(
            "href", POLICY_URL
        )
        capture(page, "preferences")
        goto(page, links["unsubscribe_url"])
        button = page.get_by_role("button", name="Unsubscribe").bounding_box()
        assert button is not None
        assert button["x"] >= 0
        assert button["x"] + button["width"] <= width
        expect(page.get_by_text(POLICY_LINE)).to_be_visible()
        capture(page, "unsubscribe")
        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
        capture(page, "unsubscribed")
    assert live.statuses(email)["newsletter"] == "unsubscribed"


def test_german_from_accept_language(browser: Browser, live: Live) -> None:
    email = new_address()
    live.subscribe(email, "newsletter")
    links = live.issue_links(email, topic="newsletter")

    with open_page(browser, live, locale="de-DE") as page:
        goto(page, links["unsubscribe_url"])
        expect(page.locator("html")).to_have_attribute("lang", "de")
        expect(page.get_by_role("heading", name="Abmelden")).to_be_visible()
        expect(
            page.get_by_text(f"Keine E-Mails zu {NEWSLETTER} mehr an {MASKED} senden?")
        ).to_be_visible()
        page.get_by_role("button", name="Abmelden").click()
        expect(page.get_by_role("heading", name="Sie sind abgemeldet")).to_be_visible()

        goto(page, links["preferences_url"])
        expect(page.get_by_role("heading", name="E-Mail-Einstellungen")).to_be_visible()
        expect(page.get_by_role("button", name="Auswahl speichern")).to_be_visible()
        expect(page.get_by_role("button", name="Von allen Werbe-E-Mails abmelden")).to_be_visible()
        page.get_by_role("link", name="English").click()
        expect(page.get_by_role("heading", name="Email preferences")).to_be_visible()
    assert live.statuses(email) == {"newsletter": "unsubscribed"}
