"""The traffic pages in a real browser (Debian's chromium) against Anvil under Daphne: requests go through a
serve that is down and fall back to one that answers; the operator filters the decisions by serve, opens one,
and reads its candidates and attempts as rows; the charts are drawn from the same log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, expect

from inference.keys import create_key
from routing.decision_log import drain_decisions
from routing.models import DecisionRecord
from serves.models import Serve
from tests.support.breakers import forget_breakers
from tests.support.browser import off_the_browser_loop, screenshot_path, sign_in
from tests.support.live import live_anvil, until_routed
from tests.support.processes import free_port
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "pw-for-browser-tests"


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs, ANVIL_SERVE_SYNC_INTERVAL="0.2", ANVIL_BREAKER_FAILURES="100") as url:
        yield url


@pytest.fixture
def traffic(anvil: str, upstream: str) -> list[str]:
    """Six requests: the first choice is down, each falls back to the second; their decision records written."""
    get_user_model().objects.create_superuser("ops", "", PASSWORD)
    forget_breakers("alpha", "beta")
    allow_tiers("fast")
    Serve.objects.create(name="alpha", tier="fast", base_url=f"http://127.0.0.1:{free_port()}/v1", served_model="a")
    Serve.objects.create(name="beta", tier="fast", base_url=f"{upstream}/v1", served_model="up-model")
    key = create_key(f"traffic-{uuid.uuid4().hex[:6]}").secret
    until_routed(anvil, key, {"beta": "allow"})
    ids = []
    for _ in range(6):
        answer = httpx.post(f"{anvil}/v1/chat/completions", headers={"x-api-key": key}, timeout=30,
                            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200 and answer.headers["x-anvil-served-by"] == "beta"
        ids.append(answer.headers["x-anvil-decision"])
    wait_for(lambda: drain_decisions() >= 0 and DecisionRecord.objects.filter(pk__in=ids).count() == len(ids), 10,
             "the decision records to be written")
    return ids


def test_filter_by_serve_open_a_decision_and_read_its_attempts(anvil: str, traffic: list[str],
                                                               browser: Browser, logs_dir: Path) -> None:
    context = browser.new_context(base_url=anvil, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    expect.set_options(timeout=15_000)
    try:
        sign_in(page, "/console/traffic/", "ops", PASSWORD)
        expect(page.locator("h1")).to_have_text("Traffic")
        expect(page.locator(".charts svg")).to_have_count(4)
        requests_chart = page.locator('.charts svg[aria-label^="Requests per minute"]')
        expect(requests_chart.locator('circle[data-series="beta"]')).not_to_have_count(0)
        page.get_by_label("Serve", exact=True).select_option("beta")
        page.get_by_role("button", name="Filter").click()
        rows = page.locator("#decisions tbody tr")
        expect(rows).to_have_count(6)
        for index in range(6):
            expect(rows.nth(index)).to_contain_text("beta")
            expect(rows.nth(index)).to_contain_text("fallback")
        page.screenshot(path=str(screenshot_path("traffic.png", logs_dir)), full_page=True)
        rows.first.get_by_role("link").click()
        expect(page.locator("h1")).to_contain_text("Decision")
        attempts = page.locator("#attempts tbody tr")
        expect(attempts).to_have_count(2)
        expect(attempts.nth(0).locator('[data-field="outcome"]')).to_have_text("unreachable")
        expect(attempts.nth(1).locator('[data-field="outcome"]')).to_have_text("served")
        expect(page.locator('#candidates tr[data-serve="alpha"]')).to_contain_text("allow")
        expect(page.locator('[data-field="served-by"]')).to_contain_text("beta")
        page.screenshot(path=str(screenshot_path("decision.png", logs_dir)), full_page=True)
        assert page.url.rstrip("/").rsplit("/", 1)[-1] in off_the_browser_loop(
            lambda: [str(pk) for pk in DecisionRecord.objects.filter(served_by="beta").values_list("pk", flat=True)])
    finally:
        context.close()
