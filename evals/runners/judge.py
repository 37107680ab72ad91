"""``runeval judge --run N [--judge NAME] [--only SERVE]``: a judge serve grades the answers of another run.

Every answer of run N that has a question on record (its case's input) and a text is sent to the
judge (``evals/judge.py``) on the rubric of its work class: planning's five dimensions for a plan,
the general answer rubric otherwise. The grade goes on the answer's own result as a ``judge``
grade, pending: it waits in the review queue and counts for the answer's serve once an operator
accepts it. This run keeps one row per answer it judged (which result, the points), with no
subject of its own, so it never counts twice.

The judge is ``--judge`` or the suite's judge serve. A judge never grades its own answers: a run
whose answers include the judge's (or its tier's, or the same model's at the same address) is
refused before it starts; ``--only`` leaves the others. A judge answer that is not the rubric's
JSON, or a refused judge request, is a harness error: recorded, never graded.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from django.db.models import QuerySet

from evals.client import Client, TargetRefused
from evals.errors import BadParameters
from evals.judge import MalformedJudgeAnswer, ask_judge, find_judge, refuse_self_judging, rubric_for
from evals.models import EvalResult, EvalRun, Grade
from evals.parameters import from_options, reject_unknown, whole
from evals.runs import RunContext, RunOutcome
from evals.targets import check_reachable, target_of_serve
from inference.transcript import request_text
from serves.models import Serve

PARAMETERS = ("run", "judge", "only")
Verdict = EvalResult.Verdict
HARNESS_ERROR = getattr(Verdict, "HARNESS_ERROR", Verdict.ERROR)
GRADABLE = (Verdict.PASS, Verdict.FAIL, Verdict.GRADED)
UNFINISHED = (EvalRun.Status.QUEUED, EvalRun.Status.RUNNING, EvalRun.Status.FAILED, EvalRun.Status.CANCELLED)


def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--run", type=int, metavar="ID", help="the run whose answers are judged")
    parser.add_argument("--judge", metavar="NAME", help="the judge serve (default: the suite's judge serve)")
    parser.add_argument("--only", action="append", metavar="SERVE", help="judge only this serve's answers "
                        "(repeatable)")


def parameters_from_options(options: dict[str, Any]) -> dict[str, Any]:
    return from_options(options, PARAMETERS)


def _answers(run_id: int, only: list[str] | None) -> QuerySet[EvalResult]:
    """The run's answers a judge can read: a text, and a question on record."""
    found = (EvalResult.objects.filter(run_id=run_id, verdict__in=GRADABLE, case__isnull=False)
             .exclude(output="").select_related("case", "case__suite", "case__suite__judge_serve").order_by("pk"))
    return found.filter(subject__in=only) if only else found


def clean_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    reject_unknown("judge", parameters, PARAMETERS)
    if parameters.get("run") is None:
        raise BadParameters("a judge run needs the run whose answers it grades: --run ID")
    run_id = whole(parameters["run"], "run", 1, 2**62)
    graded = EvalRun.objects.filter(pk=run_id).first()
    if graded is None:
        raise BadParameters(f"no run {run_id}")
    if graded.status in UNFINISHED:
        raise BadParameters(f"run {run_id} is {graded.status}: only a finished run's answers count, so only they "
                            "are judged")
    clean: dict[str, Any] = {"run": run_id}
    only = parameters.get("only")
    if only is not None:
        if not isinstance(only, list) or not only or not all(isinstance(name, str) and name for name in only):
            raise BadParameters("only is a list of serve names")
        clean["only"] = sorted(set(only))
    answers = list(_answers(run_id, clean.get("only")))
    if not answers:
        raise BadParameters(f"run {run_id} has no answers a judge can read (a text and its question)"
                            + (f" by {', '.join(clean['only'])}" if clean.get("only") else ""))
    judge = _judge(parameters.get("judge"), answers)
    refuse_self_judging(judge, {(a.subject_kind, a.subject) for a in answers},
                        hint="choose another judge, or --only the other serves' answers")
    clean["judge"] = judge.name
    return clean


def _judge(name: Any, answers: list[EvalResult]) -> Serve:
    if name is not None:
        if not isinstance(name, str) or not name:
            raise BadParameters("judge is a serve name")
        return find_judge(name)
    suites = {a.case.suite for a in answers if a.case is not None}
    judges = {suite.judge_serve for suite in suites if suite.judge_serve is not None}
    if len(judges) != 1:
        named = ", ".join(sorted(suite.name for suite in suites))
        raise BadParameters("no judge: name one with --judge NAME" if not judges else
                            f"the suites ({named}) name different judges: choose one with --judge NAME",
                            hint=f"or set the judge serve of suite {named} in the admin")
    return judges.pop()


def _note_tag(run_id: int) -> str:
    return f"(judge run {run_id})"


def execute(ctx: RunContext) -> RunOutcome:
    p = clean_parameters(ctx.parameters)
    judge = find_judge(p["judge"])
    target = target_of_serve(judge)
    check_reachable(target)  # a judge that is down fails the run with the command that starts it
    tag = _note_tag(ctx.run.pk)
    # A run taken over after its worker died starts again: its earlier grades go, so none counts twice.
    Grade.objects.filter(source=Grade.Source.JUDGE, note__endswith=tag).delete()
    scores: dict[str, list[float]] = {}
    errors = 0
    with Client(target) as client:
        for answer in ctx.each(_answers(p["run"], p.get("only")), label=lambda a: a.name):
            case = answer.case
            assert case is not None
            rubric = rubric_for(answer.work_class)
            requirements = [f"{r.get('id')}: {r.get('text')}" for r in (case.grader or {}).get("requirements", [])
                            if isinstance(r, dict)]
            details: dict[str, Any] = {"judged_result": answer.pk, "judged_run": p["run"], "subject": answer.subject,
                                       "rubric": rubric.id, "judge": judge.name}
            try:
                grade = ask_judge(client, judge, rubric, request_text(case.input or {}), answer.output, requirements)
            except (MalformedJudgeAnswer, TargetRefused) as exc:
                ctx.record(name=answer.name, subject="", work_class=answer.work_class, verdict=HARNESS_ERROR,
                           error=exc.message[:2000], details=details)
                errors += 1
                continue
            ctx.record(name=answer.name, subject="", work_class=answer.work_class, verdict=Verdict.GRADED,
                       score=grade.score, details={**details, "points": grade.points})
            ctx.grade(answer, score=grade.score, source=Grade.Source.JUDGE, grader=rubric.id,
                      dimensions=grade.dimensions, note=f"{grade.note(judge.name)} {tag}", judge_serve=judge)
            scores.setdefault(answer.subject or answer.name, []).append(grade.score)
    lines = [f"{subject}: {sum(found) / len(found):.4f} over {len(found)} answers (judge {judge.name})"
             for subject, found in sorted(scores.items())]
    lines.append(f"judge {judge.name}: {sum(map(len, scores.values()))} answers of run {p['run']} graded, "
                 f"{errors} harness errors; the grades wait in the review queue and count once accepted")
    summary = {"judge": judge.name, "judged_run": p["run"], "graded": sum(map(len, scores.values())),
               "harness_errors": errors, "scores": {s: round(sum(v) / len(v), 4) for s, v in scores.items()},
               "lines": lines}
    # Its own rows have no subject; the grades it made are pending until accepted (the review refreshes then).
    return RunOutcome(summary, updates_profile=False)
