"""The profile loop: which grades count, sample-weighted means, thresholds, overrides, the diff, promotion."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import connection

from anvil_site.snapshots import Snapshot
from evals.errors import CandidateChanged, NothingToPromote, ReviewError
from evals.models import Grade, ProfilePromotion
from evals.profile_loop import profile_diff, promote, refresh_candidate, verdict_for
from evals.review import accept_grade, override_grade, review_queue
from routing.models import ProfileEntry
from routing.profile import Profile, load_live_profile
from serves.catalog import ServeView, load_enabled
from serves.models import Serve
from tests.evals.rows import finished_run, graded_result
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db


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
    assert ProfilePromotion.objects.get().promoted_by == "ops"
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
