"""Judges: a serve grades another serve's answers on a rubric; the grades wait for review and count once
accepted; a serve never judges itself; a judge answer that is not the rubric is a harness error."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from evals.calibration import set_sampling
from evals.judge import ANSWER, PLANNING, MalformedJudgeAnswer, parse_grade
from evals.models import EvalResult, EvalRun, EvalSuite, Grade
from evals.review import accept_grade, review_queue
from routing.models import ProfileEntry
from serves.models import Serve
from tests.support.live import scripted_upstream

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_IN_PLAN = "zebra-crossing-7"


@pytest.fixture(scope="module")
def writer_url(module_logs: Path) -> Iterator[str]:
    """A serve that writes (whatever the prompt, eight tokens: a plan with no structure at all)."""
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def judge_url(module_logs: Path) -> Iterator[str]:
    """A judge that gives 4 of 5 on every dimension it is asked for."""
    with scripted_upstream(module_logs, force_scenario="judge") as url:
        yield url


@pytest.fixture(scope="module")
def prose_judge_url(module_logs: Path) -> Iterator[str]:
    """A judge that answers in prose instead of the rubric's JSON."""
    with scripted_upstream(module_logs, force_scenario="judgebad") as url:
        yield url


@pytest.fixture(autouse=True)
def every_cell_counts(settings: object) -> None:
    # Four planning prompts make four samples: let them speak, to see the judge move a cell.
    settings.ANVIL_PROFILE_MIN_SAMPLES = 1  # type: ignore[attr-defined]


def serve_at(url: str, name: str, engine: str = "vllm", tier: str = "fast") -> Serve:
    return Serve.objects.create(name=name, tier=tier, engine=engine, base_url=f"{url}/v1", served_model=name)


def runeval(*args: str) -> str:
    out = io.StringIO()
    call_command("runeval", *args, "--no-progress", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def judge_requests(url: str) -> list[dict[str, object]]:
    return [seen["body"] for seen in httpx.get(f"{url}/_requests", timeout=5).json()]


def planning_cell(serve: str) -> ProfileEntry | None:
    return ProfileEntry.objects.filter(profile="candidate", kind="serve", subject=serve, work_class="planning").first()


# --- reading the judge's answer ------------------------------------------------------
def test_a_judge_answer_is_read_strictly_and_never_quoted() -> None:
    five = '{"coverage": 5, "concreteness": 4, "risk": 3, "verification": 2, "sequencing": 1}'
    grade = parse_grade(five, PLANNING)
    assert (grade.total, grade.rubric.out_of, grade.score) == (15, 25, 0.6)
    assert grade.dimensions == {"coverage": 1.0, "concreteness": 0.8, "risk": 0.6, "verification": 0.4,
                                "sequencing": 0.2}
    assert parse_grade(f"```json\n{five}\n```", PLANNING).points == grade.points  # one fence is fine
    refused = {
        f"Here is my grade: {five}": "not JSON",
        "[5, 4, 3, 2, 1]": "not an object",
        '{"coverage": 5}': "lacks concreteness, risk, verification, sequencing",
        five[:-1] + ', "why": "' + SECRET_IN_PLAN + '"}': r"1 key\(s\) that are not dimensions",
        five.replace("5", "6", 1): "coverage is not a whole number from 0 to 5",
        five.replace("5", "4.5", 1): "coverage is not a whole number",
        five.replace("5", "true", 1): "coverage is not a whole number",
        five.replace("5", "NaN", 1): "not JSON",
        five.replace("5", f'"{SECRET_IN_PLAN}"', 1): "coverage is not a whole number",
    }
    for text, why in refused.items():
        with pytest.raises(MalformedJudgeAnswer, match=why) as caught:
            parse_grade(text, PLANNING)
        assert SECRET_IN_PLAN not in caught.value.message  # what the judge wrote may quote the graded text
    assert parse_grade('{"correctness": 5, "relevance": 5, "completeness": 5, "instructions": 5, "clarity": 5}',
                       ANSWER).score == 1.0


# --- planning --live -------------------------------------------------------------------
def test_planning_live_generates_then_grades_structurally_and_by_the_judge(writer_url: str, judge_url: str,
                                                                           tmp_path: Path) -> None:
    serve_at(writer_url, "writer")
    serve_at(judge_url, "judge", tier="heavy")
    httpx.delete(f"{judge_url}/_requests", timeout=5)
    out = runeval("planning", "--live", "--serve", "writer", "--judge", "judge", "--out", str(tmp_path))
    assert "judge judge: 4 plans graded (pending review" in out, out

    run = EvalRun.objects.get(kind="planning")
    results = list(EvalResult.objects.filter(run=run).order_by("name"))
    assert [r.name for r in results] == ["backup-restore-drill / writer", "heavy-model-swap / writer",
                                         "per-key-rate-limits / writer", "postgres-cutover / writer"]
    assert {r.subject for r in results} == {"writer"} and {r.output for r in results} == {
        "".join(f"tok{i} " for i in range(8))}
    assert (tmp_path / "postgres-cutover" / "plans" / "writer.md").read_text().startswith("tok0 ")
    structural = Grade.objects.filter(result__run=run, source="verifier")
    judged = Grade.objects.filter(result__run=run, source="judge")
    assert structural.count() == 4 and judged.count() == 4
    for grade in judged:
        assert (grade.score, grade.review_status, grade.judge_serve.name) == (0.8, "pending", "judge")
        assert grade.dimensions == dict.fromkeys(("coverage", "concreteness", "risk", "verification",
                                                  "sequencing"), 0.8)
        assert grade.grader == "plan-judge/1" and "20/25" in grade.note
    # The judge was asked for the rubric's JSON, constrained by a schema (vLLM supports it).
    asked = judge_requests(judge_url)
    assert len(asked) == 4
    schema = asked[0]["response_format"]["json_schema"]["schema"]  # type: ignore[index]
    assert schema["required"] == ["coverage", "concreteness", "risk", "verification", "sequencing"]
    assert "Take a backup of the SQLite file" in str(asked)  # the task's requirements, for coverage

    # Pending judge grades wait in the queue and do not count yet: the cell is the structural grade alone.
    assert set(review_queue().filter(source="judge").values_list("pk", flat=True)) == {g.pk for g in judged}
    before = planning_cell("writer")
    assert before is not None and before.quality == pytest.approx(sum(g.score for g in structural) / 4)
    operator = get_user_model().objects.create_user("ops")
    for grade in judged:
        accept_grade(grade.pk, operator)
    after = planning_cell("writer")
    assert after is not None and after.quality == pytest.approx(
        sum((s.score + 0.8) / 2 for s in structural) / 4)
    assert after.quality > before.quality and after.samples == before.samples == 4


def test_a_serve_never_judges_its_own_answers(writer_url: str, tmp_path: Path) -> None:
    serve_at(writer_url, "writer")
    Serve.objects.create(name="alias", tier="heavy", engine="vllm", base_url=f"{writer_url}/v1",
                         served_model="writer")  # the same model at the same address, under another name
    for judge in ("writer", "alias"):
        with pytest.raises(CommandError, match=f"serve {judge} cannot judge its own answers") as refused:
            runeval("planning", "--live", "--serve", "writer", "--judge", judge, "--out", str(tmp_path))
        assert refused.value.returncode == 2
    assert not EvalRun.objects.exists()  # refused before a run was made

    runeval("planning", "--live", "--serve", "writer", "--out", str(tmp_path))  # no judge: structural only
    made = EvalRun.objects.get(kind="planning")
    with pytest.raises(CommandError, match="serve writer cannot judge its own answers") as refused:
        runeval("judge", "--run", str(made.pk), "--judge", "writer")
    assert refused.value.returncode == 2 and "--only the other serves" in str(refused.value)
    # The suite's judge is refused the same way.
    EvalSuite.objects.filter(name="planning-bakeoff").update(judge_serve=Serve.objects.get(name="writer"))
    with pytest.raises(CommandError, match="cannot judge its own answers"):
        runeval("planning", "--live", "--serve", "writer", "--out", str(tmp_path))
    with pytest.raises(CommandError, match="cannot judge its own answers"):
        call_command("calibration", "set", "writer", "chat", "1%", "--judge", "writer", stdout=io.StringIO())
    with pytest.raises(Exception, match="cannot judge its own answers"):
        set_sampling("writer", "chat", 0.5, judge="alias")
    assert not Grade.objects.filter(source="judge").exists()


def test_the_judge_runner_grades_another_runs_answers_with_the_suites_judge(writer_url: str, judge_url: str,
                                                                            tmp_path: Path) -> None:
    serve_at(writer_url, "writer")
    # An engine without json_schema support: the judge is asked in words, and its JSON still read strictly.
    judge = serve_at(judge_url, "judge", engine="hrm", tier="heavy")
    runeval("planning", "--live", "--serve", "writer", "--out", str(tmp_path))
    made = EvalRun.objects.get(kind="planning")
    with pytest.raises(CommandError, match="no judge: name one with --judge NAME"):
        runeval("judge", "--run", str(made.pk))
    EvalSuite.objects.filter(name="planning-bakeoff").update(judge_serve=judge)
    httpx.delete(f"{judge_url}/_requests", timeout=5)

    out = runeval("judge", "--run", str(made.pk))
    assert "writer: 0.8000 over 4 answers (judge judge)" in out, out
    assert all("response_format" not in body for body in judge_requests(judge_url))
    judging = EvalRun.objects.get(kind="judge")
    assert judging.summary["graded"] == 4 and judging.summary["harness_errors"] == 0
    # The grades are on the judged answers; the judge run's own rows have no subject (they never count twice).
    assert Grade.objects.filter(result__run=made, source="judge", review_status="pending").count() == 4
    assert set(EvalResult.objects.filter(run=judging).values_list("subject", flat=True)) == {""}
    assert not Grade.objects.filter(result__run=judging).exists()


def test_a_judge_answer_that_is_not_the_rubric_is_a_harness_error_not_a_grade(writer_url: str,
                                                                              prose_judge_url: str,
                                                                              tmp_path: Path) -> None:
    serve_at(writer_url, "writer")
    serve_at(prose_judge_url, "rambler", tier="heavy")
    out = runeval("planning", "--live", "--serve", "writer", "--judge", "rambler", "--out", str(tmp_path))
    assert "judge rambler: 0 plans graded" in out and "4 answers that were not the rubric's JSON" in out
    made = EvalRun.objects.get(kind="planning")
    assert not Grade.objects.filter(source="judge").exists()
    assert all(r.details["judge_error"].startswith("the judge's answer is not JSON")
               for r in EvalResult.objects.filter(run=made))

    runeval("judge", "--run", str(made.pk), "--judge", "rambler")
    judging = EvalRun.objects.get(kind="judge")
    assert judging.summary["harness_errors"] == 4 and judging.summary["graded"] == 0
    assert set(EvalResult.objects.filter(run=judging).values_list("verdict", flat=True)) == {"harness_error"}
    assert not Grade.objects.filter(source="judge").exists()
