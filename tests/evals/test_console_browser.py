"""The operator's eval workflow in a real browser (Debian's chromium) against Anvil under Daphne and a real
Celery worker: start a run and watch its bar over the websocket, and its own page fill in place as it ends,
read the charts, override a grade, review the changed cells, promote after confirming what changes, see routing
use the promoted verdict, and revert to the live profile before it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Browser, Locator, Page, expect

from evals.models import Grade, ProfilePromotion
from inference.keys import create_key
from routing.models import ProfileEntry
from serves.models import Serve
from tests.evals.capacity_rows import LEVELS, capacity_run
from tests.support.browser import off_the_browser_loop, sign_in
from tests.support.celery_worker import celery_worker
from tests.support.live import live_anvil, until_routed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "pw-for-browser-tests"
PLANNING_PROMPT = "Write a migration plan for moving the queue to Postgres."  # classified as planning
WAIT_MS = 60_000  # a worker starting and running the run, on two busy cores
STEP_MS = 15_000  # one page answering


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    # The bake-off has four plans per serve, one under the default floor of five samples a verdict needs: the web
    # process (where the review below refreshes the candidate) counts four as enough, so the plans move cells.
    with live_anvil(module_logs, ANVIL_PROFILE_MIN_SAMPLES="4") as url:
        yield url


@dataclass
class Stack:
    key: str
    capacity_run: int


@pytest.fixture
def stack() -> Stack:
    """Serves named like the planning bake-off's, a live profile that trusts claude for planning and still has
    a retired serve's cell, an API key, and a finished benchmark-shaped run to chart."""
    get_user_model().objects.create_superuser("ops", "", PASSWORD)
    for name, tier in (("claude", "heavy"), ("heavy", "heavy"), ("fast", "fast")):
        Serve.objects.create(name=name, tier=tier, base_url="http://127.0.0.1:9/v1", served_model=f"{name}-model")
    ProfileEntry.objects.create(profile="live", kind="serve", subject="claude", work_class="planning",
                                decision="allow", quality=0.97, samples=4, source="earlier promotion")
    ProfileEntry.objects.create(profile="live", kind="serve", subject="retired", work_class="chat",
                                decision="allow", quality=0.9, samples=10, source="earlier promotion")
    return Stack(create_key("browser-test").secret, capacity_run().pk)


def cell(page: Page, side: str, subject: str, work_class: str) -> Locator:
    return page.locator(f'#{side}-matrix [data-subject="{subject}"][data-work-class="{work_class}"]')


def test_operator_runs_reviews_and_promotes_in_a_browser(anvil: str, stack: Stack, browser: Browser,
                                                         logs_dir: Path, tmp_path: Path) -> None:
    until_routed(anvil, stack.key, {"claude": "allow"}, prompt=PLANNING_PROMPT)  # the live profile before
    context = browser.new_context(base_url=anvil)
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    expect.set_options(timeout=STEP_MS)
    try:
        # Log in: the console sends an anonymous visitor to the admin's login page and back.
        sign_in(page, "/console/evals/", "ops", PASSWORD)
        expect(page.locator("h1")).to_have_text("Eval runs")

        # Start a planning run from the form; no worker runs yet, so it waits, queued, at 0%.
        page.select_option("#id_kind", "planning")
        page.fill("#id_parameters", f'{{"out": "{tmp_path / "report"}"}}')
        page.click("text=Start run")
        queued = page.locator(".messages .success")
        expect(queued).to_contain_text("Queued planning run")
        run_id = int(re.search(r"run (\d+)", queued.inner_text()).group(1))  # type: ignore[union-attr]
        row = page.locator(f'tr[data-run="{run_id}"]')
        bar = row.locator('[role="progressbar"]')
        expect(bar).to_have_attribute("aria-valuenow", "0")
        expect(row.locator('[data-field="status"]')).to_have_text("queued")
        expect(page.locator("body")).to_have_attribute("data-live", "connected")
        page.evaluate("window.stillTheSamePage = true")
        # The run's own page, open beside it while the run waits.
        run_page = context.new_page()
        run_page.goto(f"/console/evals/runs/{run_id}/")
        expect(run_page.locator('h1 [data-field="status"]')).to_have_text("queued")
        expect(run_page.locator("#gate")).to_contain_text("not yet")
        expect(run_page.locator("body")).to_have_attribute("data-live", "connected")
        run_page.evaluate("window.stillTheSamePage = true")

        # A real worker picks it up; the bar moves on this page over /ws/evals/, with no reload.
        with celery_worker(logs_dir):
            expect(bar).to_have_attribute("aria-valuenow", "100", timeout=WAIT_MS)
            expect(row.locator('[data-field="status"]')).to_have_text("succeeded")
        assert page.evaluate("window.stillTheSamePage") is True
        # The run's page filled in its summary and results in place, never showing a state the run did not end in.
        expect(run_page.locator("body")).to_have_attribute("data-redrawn", "succeeded", timeout=WAIT_MS)
        expect(run_page.locator('h1 [data-field="status"]')).to_have_text("succeeded")
        expect(run_page.locator("#summary")).to_contain_text("1. claude: 0.9739")
        expect(run_page.locator("#results tr[data-result]")).to_have_count(12)
        expect(run_page.locator("#gate")).to_contain_text("this run has no gate")
        assert run_page.evaluate("window.stillTheSamePage") is True
        run_page.close()
        expect(row.locator('[data-field="count"]')).to_have_text("12/12")
        expect(row.locator('[data-field="cancel"]')).to_have_count(0)
        page.screenshot(path=str(logs_dir / "runs.png"), full_page=True)

        # The run's page: its summary and results.
        row.locator(f'a[href="/console/evals/runs/{run_id}/"]').click()
        expect(page.locator("#summary")).to_contain_text("1. claude: 0.9739")
        expect(page.locator("#results tr[data-result]")).to_have_count(12)

        # A benchmark's page: throughput and latency charts, drawn, with their numbers in tables.
        page.goto(f"/console/evals/runs/{stack.capacity_run}/")
        charts = page.locator("#throughput-charts svg")
        expect(charts).to_have_count(2)
        assert charts.first.bounding_box()["width"] > 300  # type: ignore[index]
        expect(charts.nth(0).locator("rect.bar")).to_have_count(len(LEVELS))
        expect(page.locator('#capacity figure[data-metric="ttft_ms"] rect.bar')).to_have_count(3 * len(LEVELS))
        expect(page.locator("#throughput-table")).to_contain_text("410.2")
        expect(page.locator("#latency svg")).to_have_count(2)
        page.screenshot(path=str(logs_dir / "benchmark.png"), full_page=True)

        # Review: override one of claude's plans, with a note.
        page.click("nav >> text=Review")
        grade = page.locator('section.grade[data-result-name="backup-restore-drill / claude"]')
        expect(grade).to_contain_text("coverage")
        page.screenshot(path=str(logs_dir / "review.png"), full_page=True)
        grade.locator('input[name="score"]').fill("0")
        grade.locator('textarea[name="note"]').fill("skips the restore drill's verification step")
        grade.locator('button[name="override"]').click()
        expect(page.locator(".messages .success")).to_contain_text("Overrode grade")
        expect(grade).to_have_count(0)

        # The profile: candidate beside live, the changed cells marked.
        page.click("nav >> text=Profile")
        claude = cell(page, "candidate", "claude", "planning")
        expect(claude).to_have_attribute("data-status", "changed")
        expect(claude).to_have_attribute("data-decision", "allow-with-verify")
        expect(cell(page, "live", "claude", "planning")).to_have_attribute("data-decision", "allow")
        expect(cell(page, "candidate", "heavy", "planning")).to_have_attribute("data-status", "added")
        expect(cell(page, "candidate", "fast", "planning")).to_have_attribute("data-status", "added")
        expect(cell(page, "candidate", "retired", "chat")).to_have_attribute("data-status", "removed")
        page.screenshot(path=str(logs_dir / "profile-before.png"), full_page=True)

        # Promote: first the confirmation, listing what changes (nothing locks out: claude still plans).
        page.click("#promote-button")
        expect(page.locator("h1")).to_have_text("Promote the candidate to live?")
        changes = page.locator("#confirm-changes tbody tr")
        expect(changes).to_have_count(4)
        expect(page.locator('#confirm-changes tr[data-subject="claude"]')).to_have_attribute("data-status", "changed")
        expect(page.locator('#confirm-changes tr[data-subject="retired"]')).to_contain_text("default")
        expect(page.locator("#warnings")).to_have_count(0)
        page.screenshot(path=str(logs_dir / "promote-confirm.png"), full_page=True)
        page.click("#confirm-button")
        expect(page.locator(".messages .success")).to_contain_text("Promoted the candidate profile to live (version")
        expect(page.locator(".messages .success")).to_contain_text("2 cells added, 1 changed, 1 removed.")
        expect(page.locator("#nothing-to-promote")).to_be_visible()
        expect(cell(page, "live", "claude", "planning")).to_have_attribute("data-decision", "allow-with-verify")
        expect(page.locator("#candidate-matrix .cell.changed, #candidate-matrix .cell.added, "
                            "#candidate-matrix .cell.removed")).to_have_count(0)
        expect(page.locator('#live-matrix [data-subject="retired"]')).to_have_count(0)
        page.screenshot(path=str(logs_dir / "profile-after.png"), full_page=True)

        def stored() -> tuple[dict[tuple[str, str], tuple[str, float | None]], dict[tuple[str, str], object], str]:
            live = {(e.subject, e.work_class): (e.decision, e.quality)
                    for e in ProfileEntry.objects.filter(profile="live")}
            candidate = {(e.subject, e.work_class): (e.decision, e.quality)
                         for e in ProfileEntry.objects.filter(profile="candidate")}
            operator = Grade.objects.get(source="operator")
            assert (operator.score, operator.reviewer.username) == (0.0, "ops")
            return live, candidate, ProfilePromotion.objects.get(action="promote").promoted_by

        live, candidate, promoted_by = off_the_browser_loop(stored)
        assert live == candidate and promoted_by == "console:ops"
        assert live[("claude", "planning")][0] == "allow-with-verify"
        assert 0.70 <= live[("claude", "planning")][1] < 0.85  # type: ignore[operator]
        assert live[("heavy", "planning")][0] == live[("fast", "planning")][0] == "deny"

        # Routing follows without a restart: claude's planning answers are now verified, heavy's pin is refused,
        # and the refusal names the profile's cell.
        until_routed(anvil, stack.key, {"claude": "allow-with-verify"}, prompt=PLANNING_PROMPT)
        decision = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": stack.key}, timeout=5, json={
            "model": "heavy", "messages": [{"role": "user", "content": PLANNING_PROMPT}]}).json()
        assert decision["work_class"] == "planning"
        assert "heavy" not in [c["serve"] for c in decision["candidates"]]
        assert any(e["serve"] == "heavy" and "deny" in e["why"] for e in decision["excluded"])
        assert any(d["serve"] == "heavy" and "the quality profile denies serve heavy × planning" in d["why"]
                   for d in decision["denied_by_profile"])

        # Revert, from the versions: the live profile before the promotion, kept when it was replaced.
        kept = page.locator('#versions tr[data-action="kept"]')
        expect(kept).to_have_count(1)
        expect(page.locator('#versions tr[data-action="promote"]')).to_have_attribute("data-live", "1")
        kept.locator("button[data-revert]").click()
        expect(page.locator("h1")).to_contain_text("Revert the live profile to version #")
        expect(page.locator('#confirm-changes tr[data-subject="claude"] td').nth(4)).to_contain_text("allow 0.97")
        page.click("#confirm-button")
        expect(page.locator(".messages .success")).to_contain_text("Reverted the live profile to version")
        expect(cell(page, "live", "claude", "planning")).to_have_attribute("data-decision", "allow")
        expect(page.locator('#versions tr[data-action="revert"]')).to_have_attribute("data-live", "1")
        page.screenshot(path=str(logs_dir / "profile-reverted.png"), full_page=True)
        until_routed(anvil, stack.key, {"claude": "allow"}, prompt=PLANNING_PROMPT)
    finally:
        context.close()
