"""A real browser for end-to-end tests: Debian's chromium, driven by Playwright's sync API.

Never ``playwright install``: it downloads a browser build, and these machines
reach no such download. The browser is the distribution's (``apt-get install -y
chromium``, which .ci/run does); without it the tests fail saying so, never skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from django.db import connections

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
# Headless with nothing that phones home: the machines have no network, and a browser
# that waits on one (component updates, sync, first-run pages) only makes tests slow.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run")


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Chromium, headless; each test opens its own context (cookies, storage) on it."""
    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install -y chromium "
                    "(.ci/run installs it). Never `playwright install`: it downloads a browser.", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Page, path: str, username: str, password: str) -> None:
    """Open ``path`` as an anonymous visitor, get sent to the admin's sign-in page, sign in and come back."""
    page.goto(path)
    assert "/admin/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


def screenshot_path(name: str, fallback: Path) -> Path:
    """Where a browser test saves its screenshot: ``ANVIL_SCREENSHOTS`` (``docs/screenshots`` when refreshing the
    README's pictures), else ``fallback`` (the test's logs): a test run never rewrites tracked files."""
    chosen = os.environ.get("ANVIL_SCREENSHOTS")
    return (Path(chosen) if chosen else fallback) / name


def off_the_browser_loop(work: Callable[[], T]) -> T:
    """Run database work on a thread of its own while the browser is open.

    Playwright's sync API keeps an asyncio loop running on the test's thread, and
    Django refuses ORM calls from a thread with a running loop (they could block
    it). The work runs on a fresh thread, which closes its connections after.
    """

    def run() -> T:
        try:
            return work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
