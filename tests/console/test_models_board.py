"""The models board in a real browser (Debian's chromium) against Anvil under Daphne and a real Celery worker,
with a scripted engine as a ``process`` serve: the operator sees it loaded, unloads it (the last serve of its
model: the page asks first, and offers the undo), watches the state change with no reload, opens the row (its
timeline and its engine's log), then loads it again with an override (an out-of-range one is refused inline)
and sees it loaded with that override."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, expect

from serves.loading import do_load, do_unload
from serves.models import Serve
from tests.inference.test_pool_queues import scripted
from tests.support.browser import off_the_browser_loop, screenshot_path, sign_in
from tests.support.celery_worker import celery_worker
from tests.support.live import live_anvil

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "pw-for-browser-tests"
STEP_MS = 30_000  # a load or an unload by the worker, on two busy cores


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with celery_worker(module_logs), live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2") as url:
        yield url


@pytest.fixture
def serve() -> Iterator[Serve]:
    get_user_model().objects.create_superuser("ops", "", PASSWORD)
    made = scripted(f"board-{uuid.uuid4().hex[:5]}", deltas=4,
                    load_constraints={"max_model_len": {"min": 256, "max": 8192}})
    assert do_load(made.pk, {}, "test").outcome == "ok"
    yield made
    do_unload(made.pk, "test")


def test_unload_then_load_with_an_override_live(anvil: str, serve: Serve, browser: Browser, logs_dir: Path) -> None:
    context = browser.new_context(base_url=anvil, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    expect.set_options(timeout=STEP_MS)
    try:
        sign_in(page, "/", "ops", PASSWORD)
        expect(page.locator("h1")).to_have_text("Models")
        row = page.locator(f'tr.serve[data-serve="{serve.name}"]')
        state = row.locator('[data-field="state"] .badge')
        expect(state).to_have_text("loaded")
        expect(page.locator("#board-live")).to_have_text("live")
        page.evaluate("window.stillTheSamePage = true")
        page.screenshot(path=str(screenshot_path("models.png", logs_dir)), full_page=True)

        # The last serve of its model: the page says what unloading turns away before it does it.
        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        row.get_by_role("button", name=f"Unload {serve.name}").click()
        expect(page.locator("#board-message")).to_contain_text(f"Unloading {serve.name}")
        expect(page.locator("#board-message")).to_contain_text("Undo")
        assert asked and "503 model_not_loaded" in asked[0] and "Undo: Load" in asked[0]
        expect(state).to_have_text("unloaded")

        # Load again with an override: out of range is refused inline, in range loads with it.
        row.get_by_role("button", name="Details").click()
        detail = page.locator(f"#detail-{serve.name}")
        expect(detail.locator('[data-field="timeline"]')).to_contain_text("unload: loaded → unloading")
        expect(detail.locator('[data-field="timeline"]')).to_contain_text("console (ops)")
        expect(detail.locator('[data-field="log"]')).not_to_have_text("…")  # the engine's own log, streamed
        form = page.get_by_role("form", name=f"Load {serve.name} with overrides")
        form.get_by_label("max_model_len").fill("99999")
        form.get_by_role("button", name=f"Load {serve.name} with these").click()
        expect(form.locator(".field-error")).to_contain_text("from 256 to 8192")
        form.get_by_label("max_model_len").fill("4096")
        form.get_by_role("button", name=f"Load {serve.name} with these").click()
        expect(state).to_have_text("loaded")
        expect(page.locator(f"#detail-{serve.name}")).to_contain_text('{"max_model_len":4096}')
        assert page.evaluate("window.stillTheSamePage") is True  # every change arrived over the websocket
        page.screenshot(path=str(screenshot_path("models-detail.png", logs_dir)), full_page=True)
        live = off_the_browser_loop(lambda: Serve.objects.get(pk=serve.pk).live_overrides)
        assert live == {"max_model_len": 4096}
        # Phone width: the board scrolls inside its frame; the page does not overflow.
        page.set_viewport_size({"width": 390, "height": 800})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    finally:
        context.close()
