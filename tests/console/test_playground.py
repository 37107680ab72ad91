"""The playground in a real browser (Debian's chromium) against Anvil under Daphne, with a scripted engine that
streams eight tokens 300 ms apart: the answer grows on the page while the stream runs (partial text at an
intermediate time), then shows who served it, its TTFT and tokens per second, and links to its decision; two
models compare side by side on the same prompt."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, expect

from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.browser import off_the_browser_loop, screenshot_path, sign_in
from tests.support.live import live_anvil, scripted_upstream
from tests.support.profiles import allow_tiers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "pw-for-browser-tests"


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2") as url:
        yield url


@pytest.fixture(scope="module")
def slow_upstream(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, deltas=8, delay_ms=300) as url:
        yield url


@pytest.fixture
def serves(slow_upstream: str, upstream: str) -> None:
    forget_breakers("slowpoke", "quick")
    allow_tiers("fast")  # measured: streamed as it comes
    Serve.objects.create(name="slowpoke", tier="fast", base_url=f"{slow_upstream}/v1", served_model="up-model")
    Serve.objects.create(name="quick", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")


def test_an_answer_grows_while_it_streams_and_two_models_compare(anvil: str, serves: None, browser: Browser,
                                                                logs_dir: Path) -> None:
    off_the_browser_loop(lambda: get_user_model().objects.create_superuser("ops", "", PASSWORD))
    context = browser.new_context(base_url=anvil, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    expect.set_options(timeout=20_000)
    try:
        sign_in(page, "/console/playground/", "ops", PASSWORD)
        expect(page.locator("h1")).to_have_text("Playground")
        expect(page.locator("#play-live")).to_have_text("connected")
        form = page.get_by_role("form", name="Chat")
        form.get_by_label("Model", exact=True).select_option("slowpoke")
        form.get_by_label("Prompt", exact=True).fill("Say eight things.")
        form.get_by_label("Seed").fill("7")
        form.get_by_role("button", name="Send").click()
        text = page.locator('.lane[data-lane="a"] [data-field="text"]')
        # Mid-stream: some tokens are on the page, not all of them, and the stream has not ended.
        expect(text).to_contain_text("tok1")
        partial = text.inner_text()
        assert "tok7" not in partial, partial
        assert "tokens/s" not in page.locator('.lane[data-lane="a"] [data-field="meta"]').inner_text()
        expect(text).to_contain_text("tok7")
        meta = page.locator('.lane[data-lane="a"] [data-field="meta"]')
        expect(meta).to_contain_text("served by slowpoke")
        expect(meta).to_contain_text("tokens/s")
        assert re.search(r"TTFT \d+ ms", meta.inner_text())
        page.screenshot(path=str(screenshot_path("playground.png", logs_dir)), full_page=True)

        # Compare: the same prompt and seed to two models, side by side.
        form.get_by_label("Compare with").check()
        form.get_by_label("Second model").select_option("quick")
        form.get_by_role("button", name="Send").click()
        expect(page.locator('.lane[data-lane="b"] [data-field="meta"]')).to_contain_text("served by quick")
        expect(page.locator('.lane[data-lane="a"] [data-field="text"]')).to_contain_text("tok7")
        expect(page.locator('.lane[data-lane="b"] [data-field="text"]')).to_contain_text("tok7")

        # The answer's decision is one click away.
        meta.get_by_role("link", name="its decision").click()
        expect(page.locator("h1")).to_contain_text("Decision", timeout=20_000)
    finally:
        context.close()
