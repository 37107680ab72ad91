"""The evals admin: every list and page renders with real rows; its actions go through the domain functions."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evals.models import EvalCase, EvalResult, EvalRun, EvalSuite, Grade, ProfilePromotion
from evals.profile_loop import profile_diff, promote, refresh_candidate
from evals.runs import create_run, execute_run
from evals.tasks import scheduled_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("ops", "", "pw"))
    return client


def test_every_list_and_change_page_renders(operator: Client, tmp_path: Path) -> None:
    run = execute_run(create_run("planning", parameters={"out": str(tmp_path)}).pk)
    refresh_candidate(floor=4)  # four plans per serve: under the default floor of five samples
    promote(promoted_by="ops", expected_token=profile_diff().token, confirmed=True)
    pages = {
        "evalsuite": EvalSuite.objects.get().pk, "evalcase": EvalCase.objects.first().pk, "evalrun": run.pk,
        "evalresult": EvalResult.objects.first().pk, "grade": Grade.objects.first().pk,
    }
    for model, pk in pages.items():
        listing = operator.get(f"/admin/evals/{model}/")
        assert listing.status_code == 200, model
        assert operator.get(f"/admin/evals/{model}/{pk}/change/").status_code == 200, model
    assert operator.get("/admin/evals/profilepromotion/").status_code == 200
    version = ProfilePromotion.objects.first().pk  # type: ignore[union-attr]
    assert operator.get(f"/admin/evals/profilepromotion/{version}/change/").status_code == 200
    page = operator.get(f"/admin/evals/evalrun/{run.pk}/change/").content.decode()
    assert "postgres-cutover / claude" in page  # results inline under their run
    assert "plan-rubric/1" in operator.get(f"/admin/evals/evalresult/{EvalResult.objects.first().pk}/change/")\
        .content.decode()  # grades inline under their result


def test_admin_actions_cancel_runs_and_accept_grades(operator: Client) -> None:
    queued = create_run("planning")
    response = operator.post("/admin/evals/evalrun/", {"action": "cancel", "_selected_action": [queued.pk]})
    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.status == "cancelled"

    result = EvalResult.objects.create(run=EvalRun.objects.create(kind="benchmark", status="succeeded"),
                                       name="judged", subject="heavy", work_class="chat", verdict="graded")
    judged = Grade.objects.create(result=result, source="judge", score=0.9)
    operator.post("/admin/evals/grade/", {"action": "accept", "_selected_action": [judged.pk]})
    judged.refresh_from_db()
    assert judged.review_status == "accepted" and judged.reviewer.username == "ops"


def test_a_schedule_makes_and_runs_a_run(tmp_path: Path) -> None:
    answer = scheduled_run("planning", parameters={"out": str(tmp_path)})
    run = EvalRun.objects.get(pk=answer["run"])
    assert (answer["status"], run.requested_by) == ("succeeded", "schedule")
