"""Debian's chromium driven by Playwright, for the real-browser tests of the recipient pages
and the admin console: where the browser is, how it is launched, and what a page did besides
rendering.

Chromium missing is a failure, never a skip (CI must not pass without these tests), unless
`PREFCENTER_SKIP_BROWSER=1` asks for the skip explicitly. `make browser` installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Request, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking switches chromium phones home on start, which this
# sandbox (and many CI runners) refuse.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """One headless chromium, closed on leaving."""
    if os.environ.get("PREFCENTER_SKIP_BROWSER") == "1":
        pytest.skip("PREFCENTER_SKIP_BROWSER=1: real-browser tests skipped on request")
    executable = Path(CHROMIUM)
    if not executable.exists():
        pytest.fail(
            f"{executable} is missing: run `make browser` (installs Debian's chromium), or set "
            "PREFCENTER_SKIP_BROWSER=1 to skip the real-browser tests on purpose.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass  # no slots: Playwright caches a wrapper on the object of a bound-method handler
class Watch:
    """What the page did besides rendering: console errors (CSP violations land there) and
    every URL it fetched."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico on its own, whatever the page says; the service has
        # none to give, and that 404 is not the page's doing.
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            self.errors.append(f"{message.text} ({message.location['url']})")

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(str(error))

    def on_request(self, request: Request) -> None:
        self.requests.append(request.url)
