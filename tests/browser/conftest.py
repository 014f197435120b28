"""A real browser for the playground tests: Debian's Chromium (installed by .ci/install-browser), headless, driven by
Playwright's Python package, against real uvicorn servers on the tiny model.

Every page records what its console and its scripts report; a test fails on any script error, and on any console
error except the "failed to load resource" lines of the HTTP statuses the test itself provokes. Screenshots go to
tests/results/playground/ (ignored by git; kept as CI artifacts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import make_server  # noqa: F401  (a server of its own per test, with settings changed)
from tests.service.helpers import LiveServer, start_server, test_settings

CHROMIUM = Path("/usr/bin/chromium")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "playground"
# What a headless Chromium needs on a machine with no network beyond loopback and no display.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000  # generous: the machine may be busy; waits end as soon as their condition holds
RESOURCE_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class BrowserPage:
    """A tab with its console under watch."""

    page: Any
    url: str
    errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def open(self) -> BrowserPage:
        from playwright.sync_api import expect

        self.page.goto(f"{self.url}/playground/")
        expect(self.page.locator("#model-line")).not_to_have_text("Connecting to the server…")
        return self

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def unexpected_errors(self) -> list[str]:
        out = []
        for error in self.errors:
            status = RESOURCE_ERROR.search(error)
            if status is None or int(status.group(1)) not in self.expected_statuses:
                out.append(error)
        return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium with a fresh, empty profile per module; each test opens its own tabs in it.

    Not per session: while Playwright's synchronous API is open, the main thread counts as running an asyncio
    loop, which tests elsewhere in the suite (asyncio.run) must not inherit."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run .ci/install-browser (as root; it installs Debian's chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1100, "height": 900}, accept_downloads=True)
        context.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        yield context
        context.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Any]:
    """Opens watched tabs on a server: `tab(live).open()`; fails the test on unexpected console errors."""
    opened: list[BrowserPage] = []

    def open_tab(live: LiveServer, viewport: dict[str, int] | None = None) -> BrowserPage:
        page = browser.new_page()
        if viewport:
            page.set_viewport_size(viewport)
        watched = BrowserPage(page, live.url)
        page.on("console", lambda message: message.type == "error" and watched.errors.append(message.text))
        page.on("pageerror", lambda error: watched.errors.append(f"script error: {error}"))
        opened.append(watched)
        return watched

    yield open_tab
    problems = [error for watched in opened for error in watched.unexpected_errors()]
    for watched in opened:
        watched.page.close()
    assert not problems, f"the browser console reported errors: {problems}"


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[LiveServer]:
    """One server per module with the test defaults (16 rows, 512-token context, progress every 4 steps)."""
    live = start_server(test_settings(tiny_dir))
    yield live
    live.stop()
