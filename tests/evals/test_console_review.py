"""The grade review queue: pending grades with their output and dimensions; accept, or override with a note."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from evals.models import EvalResult, Grade
from routing.models import ProfileEntry
from tests.evals.console import operator_client, post_from, text
from tests.evals.rows import finished_run

pytestmark = pytest.mark.django_db

QUEUE = "/console/evals/review/"


@pytest.fixture
def ops() -> Client:
    return operator_client()


@pytest.fixture
def grades() -> dict[str, Grade]:
    run = finished_run(kind="planning")
    # Five samples each: enough for a verdict (ANVIL_PROFILE_MIN_SAMPLES), so a review moves the candidate.
    planned = EvalResult.objects.create(run=run, name="cutover / heavy", subject="heavy", work_class="planning",
                                        verdict="graded", score=0.9, output="1. Stop writes.\n2. <Dump> the DB.",
                                        samples=5)
    verifier = Grade.objects.create(result=planned, source="verifier", grader="plan-rubric/1", score=0.9,
                                    dimensions={"coverage": 1.0, "risk": 0.75}, note="structural grade")
    judged = EvalResult.objects.create(run=run, name="review / fast", subject="fast", work_class="review",
                                       verdict="graded", output="LGTM", samples=5)
    judge = Grade.objects.create(result=judged, source="judge", grader="judge/1", score=0.4,
                                 dimensions={"helpfulness": 0.4})
    return {"verifier": verifier, "judge": judge}


def card(page: str, grade: Grade) -> str:
    found = re.search(rf'<section class="card grade" data-grade="{grade.pk}".*?</section>', page, re.S)
    assert found, f"grade {grade.pk} is not in the queue"
    return found.group(0)


def test_the_queue_shows_each_grade_with_its_output_and_dimensions(ops: Client, grades: dict[str, Grade]) -> None:
    page = text(ops.get(QUEUE))
    shown = card(page, grades["verifier"])
    assert "cutover / heavy" in shown and "plan-rubric/1" in shown and "0.9000" in shown
    assert "1. Stop writes.\n2. &lt;Dump&gt; the DB." in shown  # the output, escaped
    assert "<td>coverage</td><td>1.0000</td>" in shown and "<td>risk</td><td>0.7500</td>" in shown
    assert f"/console/evals/review/{grades['verifier'].pk}/accept/" in shown
    assert f"/console/evals/review/{grades['verifier'].pk}/override/" in shown
    assert "LGTM" in card(page, grades["judge"])
    assert "verifier (1)" in page and "judge (1)" in page


def test_the_queue_filters_by_source(ops: Client, grades: dict[str, Grade]) -> None:
    def shown(source: str) -> set[int]:
        return {int(pk) for pk in re.findall(r'data-grade="(\d+)"', text(ops.get(f"{QUEUE}?source={source}")))}

    assert shown("judge") == {grades["judge"].pk}
    assert shown("verifier") == {grades["verifier"].pk}


def test_accepting_a_judges_grade_makes_it_count(ops: Client, grades: dict[str, Grade]) -> None:
    judge = grades["judge"]
    answer = post_from(ops, QUEUE, f"/console/evals/review/{judge.pk}/accept/", {"next": QUEUE + "?source=judge"})
    assert answer.redirect_chain[-1][0] == QUEUE + "?source=judge"
    assert f"Accepted grade {judge.pk} (0.40) of review / fast." in text(answer)
    judge.refresh_from_db()
    assert (judge.review_status, judge.reviewer.username) == ("accepted", "ops")
    assert f'data-grade="{judge.pk}"' not in text(answer)  # reviewed: out of the queue
    cell = ProfileEntry.objects.get(profile="candidate", subject="fast", work_class="review")
    assert (cell.quality, cell.decision) == (0.4, "deny")


def test_an_override_replaces_the_score_and_keeps_the_note(ops: Client, grades: dict[str, Grade]) -> None:
    verifier = grades["verifier"]
    answer = post_from(ops, QUEUE, f"/console/evals/review/{verifier.pk}/override/",
                       {"score": "0.5", "note": "misses the rollback plan"})
    assert f"Overrode grade {verifier.pk} of cutover / heavy with 0.50." in text(answer)
    verifier.refresh_from_db()
    own = Grade.objects.get(source="operator")
    assert verifier.review_status == "overridden"
    assert (own.score, own.note, own.reviewer.username, own.dimensions) == (
        0.5, "misses the rollback plan", "ops", {"coverage": 1.0, "risk": 0.75})
    assert ProfileEntry.objects.get(profile="candidate", subject="heavy").quality == 0.5


@pytest.mark.parametrize(("data", "shown"), [
    ({"score": "0.5", "note": "   "}, "an override needs a note saying why"),
    ({"score": "0.5"}, "an override needs a note saying why"),
    ({"score": "1.5", "note": "too generous"}, "score: Ensure this value is less than or equal to 1.0."),
    ({"score": "high", "note": "x"}, "score: Enter a number."),
])
def test_an_override_without_a_note_or_with_a_bad_score_is_refused_and_says_why(
        ops: Client, grades: dict[str, Grade], data: dict[str, str], shown: str) -> None:
    verifier = grades["verifier"]
    answer = post_from(ops, QUEUE, f"/console/evals/review/{verifier.pk}/override/", data)
    assert f"Grade {verifier.pk} not overridden: " in text(answer) and shown in text(answer)
    verifier.refresh_from_db()
    assert verifier.review_status == "pending" and not Grade.objects.filter(source="operator").exists()


def test_a_refusal_from_the_domain_is_shown(ops: Client, grades: dict[str, Grade]) -> None:
    verifier = grades["verifier"]
    Grade.objects.filter(pk=verifier.pk).update(review_status="overridden")  # overridden elsewhere meanwhile
    answer = post_from(ops, QUEUE, f"/console/evals/review/{verifier.pk}/accept/")
    assert "not accepted: this grade was overridden; the operator&#x27;s grade stands" in text(answer)


def test_review_posts_need_csrf_and_staff(ops: Client, grades: dict[str, Grade]) -> None:
    judge = grades["judge"]
    assert ops.post(f"/console/evals/review/{judge.pk}/accept/").status_code == 403
    assert ops.post(f"/console/evals/review/{judge.pk}/override/", {"score": "0", "note": "x"}).status_code == 403
    assert Client().post(f"/console/evals/review/{judge.pk}/accept/").status_code == 302  # to the login page
    judge.refresh_from_db()
    assert judge.review_status == "pending"
    assert ops.get(f"/console/evals/review/{judge.pk}/accept/").status_code == 405
    assert post_from(ops, QUEUE, "/console/evals/review/999999/accept/", follow=False).status_code == 404
