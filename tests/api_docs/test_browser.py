"""`/docs` in a real browser (Debian's chromium, a real `prefcenter serve`): Swagger UI renders
and "Try it out" works under its CSP, with no console error (a CSP violation is one) and
nothing fetched from any other origin. SQLite only: the page reads nothing from the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.live_server import LiveServer, fresh_database_url, live_server
from tests.support.real_browser import Watch, launch_chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("docs-browser")
    url = fresh_database_url(request, "sqlite", tmp)
    with live_server(url, log_dir=tmp, extra_env={"PREFCENTER_API_DOCS": "true"}) as running:
        yield running


def open_docs(browser: Browser, server: LiveServer, path: str) -> Iterator[Page]:
    context = browser.new_context(java_script_enabled=True)
    watch = Watch()
    try:
        page = context.new_page()
        page.on("console", watch.on_console)
        page.on("pageerror", watch.on_page_error)
        page.on("request", watch.on_request)
        page.goto(f"{server.base_url}{path}")
        yield page
        assert watch.errors == []
        foreign = [u for u in watch.requests if not u.startswith(f"{server.base_url}/")]
        assert foreign == []
    finally:
        context.close()


def test_swagger_ui_renders_every_operation(browser: Browser, server: LiveServer) -> None:
    for page in open_docs(browser, server, "/docs"):
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("prefcenter")
        expect(page.locator(".opblock-summary-path", has_text="/v1/changes")).to_be_visible()
        # "Try it out" works under the CSP: a same-origin fetch.
        page.locator(".opblock-summary", has_text="/healthz").first.click()
        page.get_by_role("button", name="Try it out").click()
        page.get_by_role("button", name="Execute").click()
        status = page.locator(".live-responses-table tr.response .response-col_status")
        expect(status.first).to_have_text("200")
