"""The profile loop: which grades count, sample-weighted means, thresholds, the sample floor, overrides, the diff,
promotion, versions and revert."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import connection

from anvil_site.snapshots import Snapshot
from evals.errors import CandidateChanged, ConfirmationRequired, NothingToPromote, ProfileError, ReviewError
from evals.models import EvalResult, Grade, ProfilePromotion
from evals.profile_loop import (
    insufficient_cells,
    profile_diff,
    promote,
    promotion_plan,
    refresh_candidate,
    revert,
    revert_plan,
    verdict_for,
)
from evals.review import accept_grade, override_grade, review_queue
from routing.models import ProfileEntry
from routing.profile import Profile, load_live_profile
from serves.catalog import ServeView, load_enabled
from serves.models import Serve
from tests.evals.rows import finished_run, graded_result
from tests.support.processes import child_env, manage
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def one_sample_is_enough(settings: Any) -> None:
    """Most tests here are about the arithmetic of one or two grades; the sample floor has tests of its own."""
    settings.ANVIL_PROFILE_MIN_SAMPLES = 1


def candidate(subject: str = "fast", work_class: str = "chat", kind: str = "serve") -> ProfileEntry:
    return ProfileEntry.objects.get(profile="candidate", kind=kind, subject=subject, work_class=work_class)


def cell(profile: str, subject: str, decision: str, quality: float, work_class: str = "chat") -> ProfileEntry:
    return ProfileEntry.objects.create(profile=profile, kind="serve", subject=subject, work_class=work_class,
                                       decision=decision, quality=quality, samples=10, source="test")


@pytest.mark.parametrize(("quality", "decision"), [
    (1.0, "allow"), (0.85, "allow"), (0.849999, "allow-with-verify"), (0.7, "allow-with-verify"),
    (0.699999, "deny"), (0.0, "deny")])
def test_thresholds(quality: float, decision: str) -> None:
    assert verdict_for(quality) == decision


@pytest.mark.parametrize(("scores", "decision", "quality"), [
    ((0.9, 0.8), "allow", 0.85),  # exactly on the allow boundary
    ((0.6, 0.8), "allow-with-verify", 0.7),  # 0.7000000000000001 in floats: rounded, not flipped
    ((0.65, 0.74), "deny", 0.695),
])
def test_boundaries_hold_through_the_mean(scores: tuple[float, float], decision: str, quality: float) -> None:
    run = finished_run()
    for score in scores:
        graded_result(run, "fast", score)
    refresh_candidate()
    entry = candidate()
    assert (entry.decision, entry.quality, entry.samples) == (decision, quality, 2)


def test_quality_is_the_sample_weighted_mean() -> None:
    run = finished_run("bootstrap")
    graded_result(run, "fast", 1.0, samples=3)
    graded_result(run, "fast", 0.0, samples=1)
    graded_result(finished_run("planning"), "fast", 0.5, samples=4)  # another kind adds up
    refresh_candidate()
    entry = candidate()
    assert entry.quality == 0.625 and entry.samples == 8  # (3 + 0 + 2) / 8; unweighted it would be 0.5


def test_a_newer_run_of_the_same_kind_replaces_the_older_and_unfinished_runs_do_not_count() -> None:
    graded_result(finished_run(minute=0), "fast", 0.2)
    graded_result(finished_run(minute=5), "fast", 0.9)
    graded_result(finished_run(minute=9, status="failed"), "fast", 0.0)
    graded_result(finished_run(minute=9, status="cancelled"), "fast", 0.0)
    refresh_candidate()
    assert (candidate().quality, candidate().samples, candidate().decision) == (0.9, 1, "allow")


def test_an_operator_override_replaces_the_automatic_score() -> None:
    operator = get_user_model().objects.create_user("ops")
    result = graded_result(finished_run(), "fast", 0.95)
    refresh_candidate()
    assert candidate().decision == "allow"
    verifier = result.grades.get()
    own = override_grade(verifier.pk, operator, 0.4, "answers the wrong question")
    assert candidate().decision == "deny" and candidate().quality == 0.4  # the candidate follows at once
    verifier.refresh_from_db()
    assert verifier.review_status == "overridden" and verifier.reviewer == operator
    assert (own.source, own.review_status, own.note) == ("operator", "accepted", "answers the wrong question")
    with pytest.raises(ReviewError, match="overridden"):
        accept_grade(verifier.pk, operator)
    with pytest.raises(ReviewError, match="needs a note"):
        override_grade(verifier.pk, operator, 0.5, "  ")


def test_a_judges_grade_counts_once_accepted_a_verifiers_at_once() -> None:
    operator = get_user_model().objects.create_user("ops")
    judged = graded_result(finished_run("benchmark"), "heavy", 0.9, source="judge")
    graded_result(finished_run("preflight"), "fast", 0.9)
    refresh_candidate()
    assert not ProfileEntry.objects.filter(subject="heavy").exists()
    assert candidate("fast").decision == "allow"
    assert [g.result.subject for g in review_queue()] == ["heavy", "fast"]
    accept_grade(judged.grades.get().pk, operator)
    assert candidate("heavy").quality == 0.9
    assert [g.result.subject for g in review_queue()] == ["fast"]


def test_measurements_of_an_earlier_identity_are_left_out_and_a_changed_serve_makes_the_cell_stale() -> None:
    serve = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m",
                                 quantization="awq")
    old_identity = serve.identity()
    graded_result(finished_run("planning"), "fast", 0.1, fingerprint="0ld", identity={"quantization": "int4"})
    graded_result(finished_run("preflight", minute=5), "fast", 0.9, fingerprint=serve.fingerprint(),
                  identity=old_identity)
    refresh_candidate()
    entry = candidate()
    assert (entry.quality, entry.samples, entry.stale) == (0.9, 1, False)
    assert entry.fingerprint == serve.fingerprint() and entry.identity == old_identity
    serve.quantization = "fp8"
    serve.save()
    graded_result(finished_run("review", minute=9), "fast", 0.9, fingerprint=entry.fingerprint,
                  identity=old_identity)
    refresh_candidate()
    entry = candidate()
    assert entry.stale and "quantization: 'awq' -> 'fp8'" in entry.stale_reason


def test_an_unchanged_refresh_touches_no_row() -> None:
    graded_result(finished_run(), "fast", 0.9)
    first = refresh_candidate()
    stamp = candidate().updated_at
    second = refresh_candidate()
    assert (first.created, second.created, second.changed, second.unchanged) == (1, 0, 0, 1)
    assert candidate().updated_at == stamp  # routing's snapshots have nothing to reload


def test_the_diff_marks_added_changed_removed_and_unchanged_cells() -> None:
    cell("live", "same", "allow", 0.9)
    cell("live", "better", "deny", 0.5)
    cell("live", "gone", "allow", 0.9)
    cell("candidate", "same", "allow", 0.9)
    cell("candidate", "better", "allow", 0.9)
    cell("candidate", "new", "allow-with-verify", 0.75)
    diff = profile_diff()
    assert diff.counts() == {"added": 1, "changed": 1, "removed": 1, "unchanged": 1}
    status = {change.subject: change.status for change in diff.changes}
    assert status == {"better": "changed", "gone": "removed", "new": "added", "same": "unchanged"}
    better = next(change for change in diff.changes if change.subject == "better")
    assert better.fields == ("decision", "quality")
    assert (better.live.decision, better.candidate.decision) == ("deny", "allow")


def test_promote_replaces_the_live_profile_and_routing_reads_it() -> None:
    fast = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m")
    cell("live", "fast", "deny", 0.5)
    cell("live", "gone", "allow", 0.9)
    cell("candidate", "fast", "allow", 0.9)
    assert load_live_profile().verdict(_view(fast), "chat")[0] == "deny"
    diff = profile_diff()
    promotion = promote(promoted_by="ops", expected_token=diff.token)
    live = load_live_profile()
    assert live.verdict(_view(fast), "chat")[0] == "allow"
    assert set(live.serves) == {("fast", "chat")}
    assert promotion.counts == {"added": 0, "changed": 1, "removed": 1, "unchanged": 0}
    assert ProfilePromotion.objects.get(action="promote").promoted_by == "ops"
    assert ProfileEntry.objects.filter(profile="candidate").count() == 1  # the candidate stays for the next round
    with pytest.raises(NothingToPromote, match="same verdicts"):
        promote(promoted_by="ops")


def test_promote_refuses_a_candidate_changed_since_review_and_leaves_live_alone() -> None:
    cell("live", "fast", "deny", 0.5)
    entry = cell("candidate", "fast", "allow", 0.9)
    reviewed = profile_diff().token
    entry.quality = 0.86
    entry.save()
    with pytest.raises(CandidateChanged):
        promote(promoted_by="ops", expected_token=reviewed)
    assert ProfileEntry.objects.get(profile="live").decision == "deny"
    assert not ProfilePromotion.objects.exists()


def test_an_empty_candidate_is_never_promoted() -> None:
    cell("live", "fast", "allow", 0.9)
    with pytest.raises(NothingToPromote, match="empty"):
        promote(promoted_by="ops")
    assert ProfileEntry.objects.filter(profile="live").count() == 1


@pytest.mark.django_db(transaction=True)
def test_routings_snapshot_sees_a_promotion_without_a_restart_even_with_the_same_row_count() -> None:
    fast = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m")
    cell("live", "fast", "deny", 0.5)
    cell("candidate", "fast", "allow", 0.9)
    snapshot: Snapshot[Profile] = Snapshot(ProfileEntry, load_live_profile, lambda: 60.0)
    view = _view(fast)

    async def verdict(force: bool) -> str:
        profile = await snapshot.get(force=force)
        return profile.verdict(view, "chat")[0]

    assert async_to_sync(verdict)(False) == "deny"
    promote(promoted_by="ops")
    assert ProfileEntry.objects.count() == 2  # the table's row count did not change
    assert async_to_sync(verdict)(True) == "allow"


@pytest.mark.django_db(transaction=True)
def test_a_reader_never_sees_half_a_promotion() -> None:
    for name in ("a", "b", "c", "d"):
        cell("live", name, "deny", 0.5)
        cell("candidate", name, "allow", 0.9)
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                profile = load_live_profile()
                seen.add(tuple(sorted(c.decision for c in profile.serves.values())))
        finally:
            connection.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        wait_for(lambda: seen, 10, "the reader's first look")
        for _ in range(15):
            promote(promoted_by="ops")
            ProfileEntry.objects.filter(profile="candidate").update(
                decision="deny" if ProfileEntry.objects.filter(profile="candidate", decision="allow").exists()
                else "allow")
        wait_for(lambda: ("allow",) * 4 in seen, 10, "the reader to see the last promotion")
    finally:
        stop.set()
        reader.join(timeout=30)
    assert seen == {("deny",) * 4, ("allow",) * 4}  # never none, never a mix


def _view(serve: Serve) -> ServeView:
    return next(view for view in load_enabled() if view.name == serve.name)


def test_grades_outside_the_unit_interval_are_refused_by_the_database() -> None:
    from django.db import IntegrityError, transaction

    result = graded_result(finished_run(), "fast", 0.5)
    with pytest.raises(IntegrityError), transaction.atomic():
        Grade.objects.create(result=result, source="verifier", score=1.5)


# --- the sample floor (ANVIL_PROFILE_MIN_SAMPLES) -------------------------------------
def test_a_cell_under_min_samples_is_insufficient_data_and_keeps_its_default(settings: Any) -> None:
    settings.ANVIL_PROFILE_MIN_SAMPLES = 5
    run = finished_run()
    for _ in range(4):
        graded_result(run, "fast", 0.0)
    report = refresh_candidate()
    assert not ProfileEntry.objects.filter(profile="candidate").exists()  # four zeros are no verdict
    assert (report.created, report.insufficient) == (0, 1) and "insufficient data" in report.describe()
    thin = insufficient_cells()[("serve", "fast", "chat")]
    assert (thin.samples, thin.needed, thin.quality) == (4, 5, 0.0)
    graded_result(run, "fast", 0.0)
    refresh_candidate()
    assert (candidate().decision, candidate().samples) == ("deny", 5)  # the thresholds keep their meaning
    assert not insufficient_cells()


def test_the_floor_counts_samples_and_can_be_set_per_refresh(settings: Any) -> None:
    settings.ANVIL_PROFILE_MIN_SAMPLES = 5
    graded_result(finished_run("bootstrap"), "fast", 0.95, samples=240)  # a replayed measurement of 240 answers
    graded_result(finished_run(), "slow", 0.95)
    refresh_candidate()
    assert candidate("fast").decision == "allow"
    assert not ProfileEntry.objects.filter(subject="slow").exists()
    refresh_candidate(floor=1)
    assert candidate("slow").decision == "allow"


def test_a_verdict_the_loop_wrote_is_withdrawn_when_it_no_longer_has_enough_samples(settings: Any) -> None:
    graded_result(finished_run(), "fast", 0.0)
    refresh_candidate()
    assert candidate().decision == "deny"  # one sample was enough under the old floor
    ProfileEntry.objects.create(profile="candidate", kind="serve", subject="fast", work_class="review",
                                decision="allow", quality=0.9, samples=1, source="imported by hand")
    graded_result(finished_run("benchmark"), "fast", 0.0, work_class="review")
    settings.ANVIL_PROFILE_MIN_SAMPLES = 5
    report = refresh_candidate()
    assert (report.withdrawn, report.insufficient) == (1, 2)
    assert not ProfileEntry.objects.filter(profile="candidate", work_class="chat").exists()
    assert candidate(work_class="review").source == "imported by hand"  # an operator's row is theirs


def test_a_gate_failed_run_counts_and_a_harness_error_never_does() -> None:
    run = finished_run(status="gate_failed")
    graded_result(run, "fast", 1.0)
    EvalResult.objects.create(run=run, name="needle", subject="fast", work_class="chat", verdict="harness_error",
                              error="a needle prompt of 2000 tokens does not fit the context of 512 tokens")
    refresh_candidate()
    assert (candidate().quality, candidate().samples) == (1.0, 1)


def test_the_sample_floor_is_checked_at_start_up() -> None:
    done = subprocess.run(manage("check"), env=child_env(ANVIL_PROFILE_MIN_SAMPLES="0"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "ANVIL_PROFILE_MIN_SAMPLES" in done.stderr, done.stderr


# --- confirmation, versions, revert ---------------------------------------------------
def _only_serve() -> ServeView:
    return _view(Serve.objects.create(name="only", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m"))


def test_a_promotion_that_denies_a_work_class_to_every_serve_needs_confirmation() -> None:
    only = _only_serve()
    cell("candidate", "only", "deny", 0.0)
    plan = promotion_plan()
    assert [(w.kind, w.name) for w in plan.warnings] == [("work_class", "chat")]
    assert "chat: no serve would be allowed to answer it" in plan.warnings[0].text and "only" in plan.warnings[0].text
    with pytest.raises(ConfirmationRequired) as refused:
        promote(promoted_by="ops", expected_token=plan.diff.token)
    assert refused.value.warnings == [plan.warnings[0].text]
    assert not ProfileEntry.objects.filter(profile="live").exists() and not ProfilePromotion.objects.exists()
    promote(promoted_by="ops", expected_token=plan.diff.token, confirmed=True)
    assert load_live_profile().verdict(only, "chat")[0] == "deny"


def test_a_serve_denied_every_work_class_is_named() -> None:
    _only_serve()
    Serve.objects.create(name="other", tier="heavy", base_url="http://127.0.0.1:1/v1", served_model="o")
    for work_class in ("chat", "bounded-edit", "multi-file-refactor", "planning", "review", "long-context"):
        cell("candidate", "only", "deny", 0.1, work_class=work_class)
    warnings = promotion_plan().warnings
    assert ("serve", "only") in [(w.kind, w.name) for w in warnings]
    assert "serve only would be denied every work class" in [w.text for w in warnings]
    assert not [w for w in warnings if w.kind == "work_class"]  # "other" still answers every class


def test_every_promotion_is_a_version_and_revert_restores_any_of_them() -> None:
    only = _only_serve()
    cell("live", "only", "allow", 0.9, work_class="review")  # imported, never promoted
    cell("candidate", "only", "allow-with-verify", 0.8)
    first = promote(promoted_by="ops")
    ProfileEntry.objects.filter(profile="candidate").update(decision="allow", quality=0.95)
    second = promote(promoted_by="ops")
    kept = ProfilePromotion.objects.get(action="kept")  # the imported live profile, kept before the first
    assert [v.pk for v in ProfilePromotion.objects.all()] == [second.pk, first.pk, kept.pk]
    assert [row["work_class"] for row in kept.entries] == ["review"]
    assert load_live_profile().verdict(only, "chat")[0] == "allow"

    back = revert(first.pk, reverted_by="ops")
    assert (back.action, back.restored_from_id, back.counts["changed"]) == ("revert", first.pk, 1)
    assert load_live_profile().verdict(only, "chat")[0] == "allow-with-verify"
    revert(kept.pk, reverted_by="ops")
    live = load_live_profile()
    assert set(live.serves) == {("only", "review")} and live.verdict(only, "chat")[0] == "allow-with-verify"
    assert not live.measured(only, "chat")  # back to the default, as before any promotion
    assert ProfilePromotion.objects.filter(action="kept").count() == 1  # every live state was a version already
    with pytest.raises(NothingToPromote, match="live profile already"):
        revert(kept.pk, reverted_by="ops")


def test_revert_refuses_what_it_cannot_restore_and_asks_before_a_lockout() -> None:
    _only_serve()
    old = ProfilePromotion.objects.create(promoted_by="ops", candidate_token="x", entries=None)
    with pytest.raises(ProfileError, match="before versions were kept"):
        revert(old.pk, reverted_by="ops")
    with pytest.raises(ProfileError, match="no profile version 999"):
        revert(999, reverted_by="ops")
    cell("candidate", "only", "deny", 0.0)
    denying = promote(promoted_by="ops", confirmed=True)
    ProfileEntry.objects.filter(profile="candidate").update(decision="allow", quality=0.9)
    promote(promoted_by="ops")
    plan = revert_plan(denying.pk)
    assert [w.name for w in plan.warnings] == ["chat"]
    with pytest.raises(ConfirmationRequired):
        revert(denying.pk, reverted_by="ops")
    with pytest.raises(CandidateChanged):
        revert(denying.pk, reverted_by="ops", expected_token="stale", confirmed=True)
    revert(denying.pk, reverted_by="ops", expected_token=plan.diff.token, confirmed=True)
    assert ProfileEntry.objects.get(profile="live").decision == "deny"
