"""The profile page: candidate beside live with the changed cells marked, promotion, and re-evals of stale serves."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client

from evals import launch
from evals.models import EvalRun, ProfilePromotion
from evals.profile_loop import refresh_candidate
from evals.runs import RUNNERS, RunnerSpec, register
from routing.models import ProfileEntry
from serves.models import Serve
from tests.evals.console import operator_client, post_from, text
from tests.evals.rows import finished_run, graded_result

pytestmark = pytest.mark.django_db

PROFILE = "/console/evals/profile/"
PROMOTE = "/console/evals/profile/promote/"
Capture = Callable[..., object]


@pytest.fixture
def ops() -> Client:
    return operator_client()


def cell(profile: str, subject: str, work_class: str, decision: str, quality: float, samples: int = 4,
         **fields: object) -> ProfileEntry:
    return ProfileEntry.objects.create(profile=profile, kind="serve", subject=subject, work_class=work_class,
                                       decision=decision, quality=quality, samples=samples, **fields)


@pytest.fixture
def diff() -> None:
    """Live and candidate differ in every way a cell can: changed, added, removed, and one unchanged."""
    cell("live", "claude", "planning", "allow", 0.97)
    cell("candidate", "claude", "planning", "allow-with-verify", 0.74)
    cell("candidate", "heavy", "planning", "deny", 0.51)
    cell("live", "old", "chat", "allow", 0.9)
    cell("live", "fast", "chat", "allow", 0.9)
    cell("candidate", "fast", "chat", "allow", 0.9)


def drawn(page: str, side: str) -> dict[tuple[str, str], dict[str, str]]:
    """The cells a matrix draws: (subject, work class) -> their data attributes."""
    matrix = re.search(rf'<table class="matrix" id="{side}-matrix">.*?</table>', page, re.S)
    assert matrix, f"no {side} matrix"
    cells = {}
    for tag in re.findall(r'<div class="cell[^"]*"[^>]*data-side[^>]*>', matrix.group(0)):
        attributes = dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))
        attributes["class"] = re.search(r'class="([^"]*)"', tag).group(1)  # type: ignore[union-attr]
        cells[(attributes["subject"], attributes["work-class"])] = attributes
    return cells


def test_candidate_and_live_side_by_side_with_the_changes_marked(ops: Client, diff: None) -> None:
    page = text(ops.get(PROFILE))
    live, candidate = drawn(page, "live"), drawn(page, "candidate")
    assert candidate[("claude", "planning")]["status"] == "changed"
    assert candidate[("claude", "planning")]["decision"] == "allow-with-verify"
    assert live[("claude", "planning")]["decision"] == "allow"
    assert candidate[("heavy", "planning")]["status"] == "added" and "decision" not in live[("heavy", "planning")]
    assert candidate[("old", "chat")]["status"] == "removed" and live[("old", "chat")]["decision"] == "allow"
    fast = candidate[("fast", "chat")]
    assert fast["status"] == "unchanged" and "changed" not in fast["class"]
    assert "0.74 · n=4" in page and "allow-with-verify" in candidate[("claude", "planning")]["class"]
    assert re.search(r"<strong>1</strong> added, <strong>1</strong> changed,\s*<strong>1</strong> removed, 1 unchanged",
                     page)
    assert 'name="token"' in page and "Promote the candidate to live" in page


def confirm_page(ops: Client) -> str:
    """The confirmation page the profile page's Promote button leads to."""
    token = re.search(r'name="token" value="([0-9a-f]+)"', text(ops.get(PROFILE))).group(1)  # type: ignore[union-attr]
    return f"{PROMOTE}?token={token}"


def test_promote_asks_for_confirmation_listing_what_changes(ops: Client, diff: None) -> None:
    asked = text(ops.get(confirm_page(ops)))
    assert "Promote the candidate to live?" in asked and 'name="confirmed" value="yes"' in asked
    changes = dict(re.findall(r'<tr data-subject="(\w+)" data-work-class="[\w-]+" data-status="(\w+)">', asked))
    assert changes == {"claude": "changed", "heavy": "added", "old": "removed"}
    assert 'id="warnings"' not in asked  # no serve is in the serves table, so routing refuses nothing new
    # A POST without the confirmation (an old page, a script) changes nothing and goes to the confirmation.
    bare = post_from(ops, PROFILE, PROMOTE)
    assert "Not promoted yet: confirm the change below." in text(bare)
    assert "Promote the candidate to live?" in text(bare)
    assert ProfileEntry.objects.get(profile="live", subject="claude").decision == "allow"
    assert not ProfilePromotion.objects.exists()


def test_promote_makes_live_equal_the_candidate(ops: Client, diff: None) -> None:
    answer = post_from(ops, confirm_page(ops), PROMOTE)
    page = text(answer)
    assert "Promoted the candidate profile to live (version " in page and \
        "1 cells added, 1 changed, 1 removed." in page
    assert drawn(page, "live") == {key: {**value, "side": "live", "status": ""}
                                   for key, value in drawn(page, "candidate").items()}
    assert {c["status"] for c in drawn(page, "candidate").values()} == {"unchanged"}
    assert "nothing to promote" in page and "Promote the candidate to live" not in page
    live = {(e.subject, e.work_class): e.decision for e in ProfileEntry.objects.filter(profile="live")}
    assert live == {("claude", "planning"): "allow-with-verify", ("heavy", "planning"): "deny",
                    ("fast", "chat"): "allow"}
    assert ProfilePromotion.objects.get(action="promote").promoted_by == "console:ops"
    assert ProfilePromotion.objects.get(action="kept").entries[0]["subject"] == "claude"  # the live profile before


def test_a_promotion_that_locks_out_a_work_class_is_warned_of_by_name(ops: Client) -> None:
    Serve.objects.create(name="only", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m")
    cell("candidate", "only", "chat", "deny", 0.0, samples=5)
    asked = text(ops.get(confirm_page(ops)))
    assert '<li data-kind="work_class" data-name="chat">chat: no serve would be allowed to answer it' in asked
    assert "Promote anyway" in asked
    answer = post_from(ops, confirm_page(ops), PROMOTE)
    assert "Promoted the candidate profile to live" in text(answer)
    assert ProfileEntry.objects.get(profile="live").decision == "deny"


def test_a_candidate_changed_after_the_page_was_drawn_is_not_promoted(ops: Client, diff: None) -> None:
    page = confirm_page(ops)
    asked = text(ops.get(page))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', asked).group(1)  # type: ignore[union-attr]
    reviewed = re.search(r'name="token" value="([0-9a-f]+)"', asked).group(1)  # type: ignore[union-attr]
    ProfileEntry.objects.filter(profile="candidate", subject="heavy").update(decision="allow", quality=0.9)
    assert "changed after the profile page was drawn" in text(ops.get(page))
    answer = ops.post(PROMOTE, {"token": reviewed, "confirmed": "yes", "csrfmiddlewaretoken": token}, follow=True)
    assert "Not promoted: the candidate or the live profile changed after this diff was shown (hint: review the " \
           "new diff, then promote again)" in text(answer)
    assert ProfileEntry.objects.get(profile="live", subject="claude").decision == "allow"
    assert not ProfilePromotion.objects.exists()


def test_promote_needs_the_token_and_csrf(ops: Client, diff: None) -> None:
    page = text(ops.get(PROFILE))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    missing = ops.post(PROMOTE, {"csrfmiddlewaretoken": token, "confirmed": "yes"}, follow=True)
    assert "Not promoted: token: the diff&#x27;s token is missing" in text(missing)
    assert ops.post(PROMOTE, {"token": "x", "confirmed": "yes"}).status_code == 403
    assert Client().post(PROMOTE, {"token": "x"}).status_code == 302
    assert not ProfilePromotion.objects.exists()


def test_nothing_to_promote_says_so(ops: Client) -> None:
    assert "No cells in either profile." in text(ops.get(PROFILE))
    assert "nothing to promote" in text(ops.get(PROFILE))


def test_a_cell_with_too_few_samples_shows_as_insufficient_data_with_its_count(ops: Client, settings: Any) -> None:
    settings.ANVIL_PROFILE_MIN_SAMPLES = 5
    run = finished_run()
    graded_result(run, "hrm-demo", 0.0)
    refresh_candidate()
    page = text(ops.get(PROFILE))
    thin = drawn(page, "candidate")[("hrm-demo", "chat")]
    assert (thin["decision"], thin["samples"]) == ("insufficient", "1")
    assert "insufficient data<br>n=1 of 5" in page and "a verdict needs at least 5 samples" in page
    assert ("hrm-demo", "chat") not in drawn(page, "live")
    assert not ProfileEntry.objects.exists()


def test_revert_from_the_profile_page_restores_the_live_profile_it_names(ops: Client, diff: None) -> None:
    post_from(ops, confirm_page(ops), PROMOTE)
    kept = ProfilePromotion.objects.get(action="kept")
    page = text(ops.get(PROFILE))
    assert f'data-version="{kept.pk}" data-action="kept"' in page and f'data-revert="{kept.pk}"' in page
    revert_page = f"/console/evals/profile/versions/{kept.pk}/revert/"
    asked = text(ops.get(revert_page))
    assert f"Revert the live profile to version #{kept.pk}?" in asked
    answer = text(post_from(ops, revert_page, revert_page))
    assert f"Reverted the live profile to version {kept.pk}" in answer
    live = {(e.subject, e.work_class): e.decision for e in ProfileEntry.objects.filter(profile="live")}
    assert live == {("claude", "planning"): "allow", ("old", "chat"): "allow", ("fast", "chat"): "allow"}
    reverted = ProfilePromotion.objects.get(action="revert")
    assert (reverted.restored_from_id, reverted.promoted_by) == (kept.pk, "console:ops")
    assert re.search(rf'data-version="{reverted.pk}" data-action="revert" data-live="1"', answer)
    assert "Cannot revert: there is no profile version 999" in text(
        ops.get("/console/evals/profile/versions/999/revert/", follow=True))


# --- stale serves and their re-evals --------------------------------------------
@pytest.fixture
def reeval_runner() -> Iterator[str]:
    """A test runner under the re-eval kind (the real one needs a serve that answers), put back after."""
    kind = launch.REEVAL_KIND
    before = RUNNERS.get(kind)
    register(RunnerSpec(kind, "tests.evals.reachability_runner", "is the serve up?", needs_target=True))
    yield kind
    if before is None:
        RUNNERS.pop(kind)
    else:
        register(before)


@pytest.fixture
def stale_serve() -> Serve:
    serve = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m-1")
    measured = serve.fingerprint(), serve.identity()
    cell("live", "fast", "chat", "allow", 0.9, fingerprint=measured[0], identity=measured[1])
    cell("live", "fast", "review", "deny", 0.4, stale=True, stale_reason="identity changed: revision")
    Serve.objects.filter(pk=serve.pk).update(served_model="m-2")  # a new model behind the same name
    Serve.objects.create(name="steady", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="s")
    cell("live", "steady", "chat", "allow", 0.9, fingerprint=Serve.objects.get(name="steady").fingerprint())
    return Serve.objects.get(pk=serve.pk)


def stale_row(page: str, serve: str) -> str | None:
    found = re.search(rf'<tr data-serve="{serve}">.*?</tr>', page, re.S)
    return found.group(0) if found else None


def test_a_stale_serve_is_listed_with_why_and_a_reeval_button(ops: Client, stale_serve: Serve) -> None:
    page = text(ops.get(PROFILE))
    row = stale_row(page, "fast")
    assert row is not None and stale_row(page, "steady") is None
    assert "identity changed: served_model: &#x27;m-1&#x27; -&gt; &#x27;m-2&#x27;" in row  # by its fingerprint
    assert "identity changed: revision" in row  # marked stale by routing
    assert "/console/evals/serves/fast/reeval/" in row and "Queue re-eval" in row


def test_queue_reeval_creates_and_enqueues_a_run_for_the_serve(ops: Client, stale_serve: Serve, reeval_runner: str,
                                                              django_capture_on_commit_callbacks: Capture) -> None:
    with django_capture_on_commit_callbacks() as enqueued:
        answer = post_from(ops, PROFILE, "/console/evals/serves/fast/reeval/")
    run = EvalRun.objects.get()
    assert (run.kind, run.status, run.target_serve, run.requested_by) == (reeval_runner, "queued", stale_serve,
                                                                         "console:ops")
    assert len(enqueued) == 1 and run.celery_task_id
    page = text(answer)
    assert f"Queued {reeval_runner} run {run.pk} against fast." in page
    assert f"re-eval run #{run.pk} queued" in stale_row(page, "fast")  # type: ignore[operator]

    again = post_from(ops, PROFILE, "/console/evals/serves/fast/reeval/")
    assert f"No re-eval of fast queued: a re-eval of fast is already queued (run {run.pk})" in text(again)
    assert EvalRun.objects.count() == 1


def test_a_reeval_kind_with_no_runner_is_refused_with_the_known_kinds(ops: Client, stale_serve: Serve,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "REEVAL_KIND", "not-a-kind")
    answer = post_from(ops, PROFILE, "/console/evals/serves/fast/reeval/")
    shown = html.unescape(text(answer))
    assert "No re-eval of fast queued: no runner for eval kind 'not-a-kind' (hint: known kinds:" in shown
    assert not EvalRun.objects.exists()


def test_reeval_of_an_unknown_serve_and_without_csrf(ops: Client, stale_serve: Serve, reeval_runner: str) -> None:
    answer = post_from(ops, PROFILE, "/console/evals/serves/gone/reeval/")
    assert "No re-eval of gone queued: unknown serve &#x27;gone&#x27;" in text(answer)
    assert ops.post("/console/evals/serves/fast/reeval/").status_code == 403
    assert not EvalRun.objects.exists()
