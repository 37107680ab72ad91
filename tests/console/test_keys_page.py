"""The keys page in a real browser (Debian's chromium) against Anvil under Daphne: create a key with limits and
see its secret once, use it, revoke it after the page asks, see a request with it refused, and undo."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, expect

from tests.support.browser import off_the_browser_loop, screenshot_path, sign_in
from tests.support.live import live_anvil
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "pw-for-browser-tests"


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_KEY_SYNC_INTERVAL="0.2") as url:
        yield url


def models_status(anvil: str, secret: str) -> int:
    return httpx.get(f"{anvil}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10).status_code


def test_create_see_once_revoke_and_restore_a_key(anvil: str, browser: Browser, logs_dir: Path) -> None:
    off_the_browser_loop(lambda: get_user_model().objects.create_superuser("ops", "", PASSWORD))
    context = browser.new_context(base_url=anvil, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    try:
        sign_in(page, "/console/keys/", "ops", PASSWORD)
        expect(page.locator("h1")).to_have_text("Keys")
        form = page.get_by_role("form", name="Create a key")
        form.get_by_label("Name").fill("team-a")
        form.get_by_label("Reach").fill("tier:fast hrm-*")
        form.get_by_label("Requests per minute").fill("60")
        form.get_by_label("Budget (USD)").fill("25")
        form.get_by_role("button", name="Create key").click()
        secret = page.locator("#new-secret").inner_text()
        assert re.fullmatch(r"anv_[a-z0-9]{8}_[\w-]{43}", secret), secret
        row = page.locator('tr[data-key="team-a"]')
        expect(row).to_contain_text("tier:fast, hrm-*")
        expect(row).to_contain_text("rpm 60")
        expect(row).to_contain_text("of $25.00/month")
        assert models_status(anvil, secret) == 200
        page.screenshot(path=str(screenshot_path("keys.png", logs_dir)), full_page=True,
                        mask=[page.locator("#new-secret")])
        page.reload()
        expect(page.locator("#new-secret")).to_have_count(0)  # shown once: never again
        assert secret not in page.content()

        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        row.get_by_role("button", name="Revoke team-a").click()
        expect(row.locator('[data-field="state"]')).to_have_text("revoked")
        assert asked and "401" in asked[0] and "Undo: Restore" in asked[0]
        wait_for(lambda: models_status(anvil, secret) == 401, 5, "the revoked key to be refused")

        row.get_by_role("button", name="Restore team-a").click()
        expect(row.locator('[data-field="state"]')).to_have_text("active")
        wait_for(lambda: models_status(anvil, secret) == 200, 5, "the restored key to work again")
    finally:
        context.close()
