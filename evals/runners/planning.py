"""``runeval planning``: re-grade the committed planning bake-off, offline and byte-reproducibly.

Reads ``evals/fixtures/planning/TASK/{task.json, plans/SERVE.md}`` (see the
README there), grades every plan with the structural rubric
(``evals/plan_rubric.py``), stores one result and one verifier grade per plan,
and writes ``planning-report.json`` and ``planning-report.md``: the same
fixtures give the same bytes on every re-run. The grades feed the quality
profile's ``planning`` cells of each serve.

Optional gate: ``--min-quality Q`` passes when every graded serve's mean is at
least Q (with ``--only SERVE`` to ask about one serve).

``--live --serve NAME [--serve NAME …] [--judge NAME]`` first asks the named serves for
plans to the committed prompts, then grades what they wrote: structurally as above (a verifier
grade), and by the judge serve when one is given (or the suite has one), on the planning rubric
(``evals/judge.py``: a judge grade, pending until an operator accepts it). The generated plans
are written beside the report in the fixtures' layout (``TASK/plans/SERVE.md``), so a run worth
keeping can be committed as bake-off data. A serve that does not answer a prompt, and a judge
answer that is not the rubric's JSON, are harness errors: recorded, never graded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser

from evals.client import Client, TargetRefused
from evals.errors import BadParameters, FixtureError, UnknownServe
from evals.judge import PLANNING, MalformedJudgeAnswer, ask_judge, find_judge, refuse_self_judging
from evals.models import EvalCase, EvalResult, EvalSuite, Grade, RunKind
from evals.parameters import from_options, number, reject_unknown, whole
from evals.plan_rubric import DIMENSIONS, RUBRIC, Requirement, grade_plan
from evals.planning_report import GradedPlan, build_report, render_json, render_markdown
from evals.runs import RunContext, RunOutcome
from evals.targets import check_reachable, target_of_serve
from routing.models import WorkClass
from serves.models import Serve

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "planning"
SUITE = "planning-bakeoff"
REPORT_JSON = "planning-report.json"
REPORT_MARKDOWN = "planning-report.md"
PARAMETERS = ("fixtures", "out", "only", "min_quality", "live", "serves", "judge", "max_tokens")
LIVE_ONLY = ("serves", "judge", "max_tokens")
# A plan is a page or two of markdown; a reasoning model thinks first.
DEFAULT_PLAN_TOKENS = 4096
Verdict = EvalResult.Verdict
# A check that could not run (the serve refused our request, the judge's answer was not the rubric).
HARNESS_ERROR = getattr(Verdict, "HARNESS_ERROR", Verdict.ERROR)


def default_out_dir(live: bool = False) -> Path:
    return Path(settings.VAR_DIR) / "evals" / ("planning-live" if live else "planning")


# --- the command line and the parameters ---------------------------------------
def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--fixtures", type=Path, help=f"the bake-off data (default: {FIXTURES})")
    parser.add_argument("--out", type=Path, help="where the report goes (default: VAR_DIR/evals/planning)")
    parser.add_argument("--only", action="append", metavar="SERVE", help="grade only this serve's plans (repeatable)")
    parser.add_argument("--min-quality", type=float, metavar="Q",
                        help="gate: every graded serve's mean must be at least Q (0..1)")
    parser.add_argument("--live", action="store_true", default=None,
                        help="first ask the --serve serves for plans to the committed prompts, then grade those")
    parser.add_argument("--serve", action="append", dest="serves", metavar="NAME",
                        help="with --live: a serve that writes plans (repeatable)")
    parser.add_argument("--judge", metavar="NAME",
                        help="with --live: the serve that grades the plans on the planning rubric "
                             "(default: the suite's judge serve, if it has one)")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help=f"with --live: the most tokens a plan may take ({DEFAULT_PLAN_TOKENS})")


def parameters_from_options(options: dict[str, Any]) -> dict[str, Any]:
    return from_options(options, PARAMETERS)


def clean_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    reject_unknown("planning", parameters, PARAMETERS)
    clean: dict[str, Any] = {}
    for name in ("fixtures", "out"):
        if parameters.get(name) is not None:
            if not isinstance(parameters[name], str) or not parameters[name]:
                raise BadParameters(f"{name} is a directory path")
            clean[name] = parameters[name]
    only = parameters.get("only")
    if only is not None:
        if not isinstance(only, list) or not all(isinstance(name, str) and name for name in only):
            raise BadParameters("only is a list of serve names")
        clean["only"] = sorted(set(only))
    if parameters.get("min_quality") is not None:
        clean["min_quality"] = number(parameters["min_quality"], "min_quality", 0, 1)
    if not parameters.get("live"):
        given = [name for name in LIVE_ONLY if parameters.get(name) is not None]
        if given:
            raise BadParameters(f"{', '.join(given)} apply to a live run only", hint="add --live")
        return clean
    clean["live"] = True
    if clean.get("only"):
        raise BadParameters("only applies to the committed bake-off; a live run grades the --serve serves")
    serves = parameters.get("serves")
    if not isinstance(serves, list) or not serves or not all(isinstance(name, str) and name for name in serves):
        raise BadParameters("a live planning run needs the serves that write plans: --serve NAME (repeatable)")
    clean["serves"] = sorted(set(serves))
    for name in clean["serves"]:
        _serve(name)
    clean["max_tokens"] = whole(parameters.get("max_tokens", DEFAULT_PLAN_TOKENS), "max_tokens", 1, 1_000_000)
    judge = parameters.get("judge")
    if judge is not None and (not isinstance(judge, str) or not judge):
        raise BadParameters("judge is a serve name")
    judge_serve = find_judge(judge) if judge else _suite_judge()
    if judge_serve is not None:
        refuse_self_judging(judge_serve, [("serve", name) for name in clean["serves"]],
                            hint="a judge grades other serves' plans: choose a judge that is not among --serve")
        clean["judge"] = judge_serve.name
    return clean


def _serve(name: str) -> Serve:
    serve = Serve.objects.filter(name=name).first()
    if serve is None:
        known = ", ".join(Serve.objects.order_by("name").values_list("name", flat=True))
        raise UnknownServe(f"unknown serve {name!r}", hint=f"known serves: {known}" if known else
                           "import a serves.toml first: python manage.py serves import FILE")
    if not serve.effective_base_url:
        raise BadParameters(f"serve {name!r} has neither a base_url nor a port")
    return serve


def _suite_judge() -> Serve | None:
    suite = EvalSuite.objects.filter(name=SUITE).select_related("judge_serve").first()
    return suite.judge_serve if suite is not None else None


# --- the committed data --------------------------------------------------------
@dataclass(frozen=True)
class PlanningTask:
    id: str
    title: str
    prompt: str
    requirements: tuple[Requirement, ...]
    plans: tuple[tuple[str, str], ...]  # (serve, plan text), sorted by serve


def _read(path: Path, root: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FixtureError(f"{path.relative_to(root)}: cannot be read ({exc})") from None


def _requirements(raw: Any, where: str) -> tuple[Requirement, ...]:
    if not isinstance(raw, list) or not raw:
        raise FixtureError(f"{where}: requirements must be a non-empty list")
    found = []
    for index, item in enumerate(raw):
        spot = f"{where}: requirements[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise FixtureError(f"{spot} needs an id")
        terms = item.get("terms")
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
            raise FixtureError(f"{spot} ({item['id']}) needs a non-empty list of terms")
        found.append(Requirement(item["id"], str(item.get("text", "")), tuple(t.strip() for t in terms)))
    ids = [r.id for r in found]
    if len(set(ids)) != len(ids):
        raise FixtureError(f"{where}: requirement ids repeat")
    return tuple(found)


def load_bakeoff(root: Path) -> tuple[tuple[PlanningTask, ...], list[tuple[str, str]]]:
    """The tasks with their plans, and (relative file name, sha256) of every file read."""
    if not root.is_dir():
        raise FixtureError(f"{root}: no such directory", hint="--fixtures names a directory of planning tasks")
    tasks, inputs = [], []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        task_file = directory / "task.json"
        text = _read(task_file, root)
        where = str(task_file.relative_to(root))
        inputs.append((where, hashlib.sha256(text.encode()).hexdigest()))
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FixtureError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("id") != directory.name:
            raise FixtureError(f"{where}: id must be the directory's name, {directory.name!r}")
        plans = []
        for plan_file in sorted((directory / "plans").glob("*.md")):
            plan = _read(plan_file, root)
            inputs.append((str(plan_file.relative_to(root)), hashlib.sha256(plan.encode()).hexdigest()))
            plans.append((plan_file.stem, plan))
        if not plans:
            raise FixtureError(f"{directory.name}: no plans (plans/SERVE.md)")
        tasks.append(PlanningTask(directory.name, str(raw.get("title", "")), str(raw.get("prompt", "")),
                                  _requirements(raw.get("requirements"), where), tuple(plans)))
    if not tasks:
        raise FixtureError(f"{root}: no planning tasks (TASK/task.json)")
    return tuple(tasks), inputs


def _sync_suite(tasks: tuple[PlanningTask, ...]) -> dict[str, EvalCase]:
    suite, _ = EvalSuite.objects.update_or_create(name=SUITE, defaults={
        "kind": RunKind.PLANNING, "description": "The committed planning bake-off, graded by " + RUBRIC})
    cases = {}
    for task in tasks:
        cases[task.id], _ = EvalCase.objects.update_or_create(suite=suite, name=task.id, defaults={
            "work_class": WorkClass.PLANNING, "input": {"title": task.title, "prompt": task.prompt},
            "grader": {"kind": "plan_rubric", "rubric": RUBRIC, "requirements": [
                {"id": r.id, "text": r.text, "terms": list(r.terms)} for r in task.requirements]}})
    return cases


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a report."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


# --- the run -------------------------------------------------------------------
def execute(ctx: RunContext) -> RunOutcome:
    parameters = clean_parameters(ctx.parameters)
    if parameters.get("live"):
        return execute_live(ctx, parameters)
    root = Path(parameters.get("fixtures") or FIXTURES)
    out = Path(parameters.get("out") or default_out_dir())
    only = parameters.get("only")
    tasks, inputs = load_bakeoff(root)
    if only:
        known = {serve for task in tasks for serve, _ in task.plans}
        unknown = sorted(set(only) - known)
        if unknown:
            raise BadParameters(f"no plans by {', '.join(unknown)}", hint=f"serves in the bake-off: "
                                f"{', '.join(sorted(known))}")
        keep = {f"{task.id}/plans/{serve}.md" for task in tasks for serve, _ in task.plans if serve in only}
        inputs = [(name, digest) for name, digest in inputs if name.endswith("task.json") or name in keep]
    cases = _sync_suite(tasks)
    work = [(task, serve, text) for task in tasks for serve, text in task.plans if not only or serve in only]
    graded = []
    for task, serve, text in ctx.each(work, label=lambda item: f"{item[0].id} / {item[1]}"):
        score = grade_plan(text, task.requirements)
        result = ctx.record(name=f"{task.id} / {serve}", case=cases[task.id], subject=serve,
                            work_class=WorkClass.PLANNING, verdict=EvalResult.Verdict.GRADED, score=score.overall,
                            output=text, details={"dimensions": score.dimensions, "missing": list(score.missing),
                                                  "counts": score.counts})
        missing = f"; missing requirements: {', '.join(score.missing)}" if score.missing else ""
        ctx.grade(result, score=score.overall, grader=RUBRIC, dimensions=score.dimensions,
                  note=f"structural grade{missing}")
        graded.append(GradedPlan(task.id, task.title, serve, score))
    report = build_report(graded, inputs)
    json_text = render_json(report)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / REPORT_JSON, json_text)
    _write(out / REPORT_MARKDOWN, render_markdown(report))

    floor = parameters.get("min_quality")
    gate = None if floor is None else all(row["overall"] >= floor for row in report["serves"])
    lines = [f"{row['rank']}. {row['serve']}: {row['overall']:.4f} over {row['plans']} plans ("
             + ", ".join(f"{name} {row['dimensions'][name]:.2f}" for name in DIMENSIONS) + ")"
             for row in report["serves"]]
    if floor is not None:
        lines.append(f"gate: every serve at least {floor:.2f}: {'passed' if gate else 'FAILED'}")
    lines.append(f"report: {out / REPORT_MARKDOWN}")
    summary = {"serves": {row["serve"]: row["overall"] for row in report["serves"]}, "plans": len(graded),
               "tasks": len(tasks), "report_json": str(out / REPORT_JSON),
               "report_markdown": str(out / REPORT_MARKDOWN),
               "report_sha256": hashlib.sha256(json_text.encode()).hexdigest(), "lines": lines}
    return RunOutcome(summary, gate_passed=gate)


# --- live: the serves write the plans, then they are graded ----------------------
def execute_live(ctx: RunContext, parameters: dict[str, Any]) -> RunOutcome:
    root = Path(parameters.get("fixtures") or FIXTURES)
    out = Path(parameters.get("out") or default_out_dir(live=True))
    tasks, inputs = load_bakeoff(root)
    inputs = [(name, digest) for name, digest in inputs if name.endswith("task.json")]  # not the committed plans
    writers = [_serve(name) for name in parameters["serves"]]
    judge = find_judge(parameters["judge"]) if parameters.get("judge") else None
    for serve in [*writers, *([judge] if judge else [])]:
        check_reachable(target_of_serve(serve))  # a serve that is down fails the run with the command that starts it
    cases = _sync_suite(tasks)
    clients = {serve.name: Client(target_of_serve(serve)) for serve in writers}
    judging = Client(target_of_serve(judge)) if judge else None
    graded: list[GradedPlan] = []
    judged: dict[str, list[float]] = {}
    tally = {"harness_errors": 0, "judge_errors": 0}
    try:
        work = [(task, serve) for task in tasks for serve in writers]
        for task, serve in ctx.each(work, label=lambda item: f"{item[0].id} / {item[1].name}"):
            name = f"{task.id} / {serve.name}"
            try:
                answer = clients[serve.name].chat([{"role": "user", "content": task.prompt}],
                                                  max_tokens=parameters["max_tokens"], temperature=0)
            except TargetRefused as exc:
                ctx.record(name=name, case=cases[task.id], subject=serve.name, work_class=WorkClass.PLANNING,
                           verdict=HARNESS_ERROR, error=str(exc)[:2000])
                tally["harness_errors"] += 1
                continue
            fields = {"latency_s": answer.latency_s, "prompt_tokens": answer.prompt_tokens,
                      "completion_tokens": answer.completion_tokens, "finish_reason": answer.finish_reason[:32]}
            if answer.budget_exhausted:
                ctx.record(name=name, case=cases[task.id], subject=serve.name, work_class=WorkClass.PLANNING,
                           verdict=Verdict.BUDGET_EXHAUSTED, **fields)
                continue
            text = answer.text
            plan_file = out / task.id / "plans" / f"{serve.name}.md"
            plan_file.parent.mkdir(parents=True, exist_ok=True)
            _write(plan_file, text)
            inputs.append((f"{task.id}/plans/{serve.name}.md", hashlib.sha256(text.encode()).hexdigest()))
            score = grade_plan(text, task.requirements)
            details: dict[str, Any] = {"dimensions": score.dimensions, "missing": list(score.missing),
                                       "counts": score.counts, "live": True}
            result = ctx.record(name=name, case=cases[task.id], subject=serve.name, work_class=WorkClass.PLANNING,
                                verdict=Verdict.GRADED, score=score.overall, output=text, details=details, **fields)
            missing = f"; missing requirements: {', '.join(score.missing)}" if score.missing else ""
            ctx.grade(result, score=score.overall, grader=RUBRIC, dimensions=score.dimensions,
                      note=f"structural grade{missing}")
            graded.append(GradedPlan(task.id, task.title, serve.name, score))
            if judge is not None and judging is not None:
                _judge_plan(ctx, judging, judge, task, result, text, judged, tally)
    finally:
        for client in clients.values():
            client.__exit__()
        if judging is not None:
            judging.__exit__()
    return _live_outcome(parameters, tasks, graded, inputs, judged, tally, judge, out)


def _judge_plan(ctx: RunContext, client: Client, judge: Serve, task: PlanningTask, result: EvalResult, text: str,
                judged: dict[str, list[float]], tally: dict[str, int]) -> None:
    requirements = [f"{r.id}: {r.text}" if r.text else r.id for r in task.requirements]
    try:
        grade = ask_judge(client, judge, PLANNING, task.prompt, text, requirements)
    except (MalformedJudgeAnswer, TargetRefused) as exc:
        # The judge could not grade it: a harness error on the judge's part, not a grade of the plan.
        result.details = {**result.details, "judge_error": exc.message[:500]}
        result.save(update_fields=["details"])
        tally["judge_errors"] += 1
        return
    ctx.grade(result, score=grade.score, source=Grade.Source.JUDGE, grader=PLANNING.id, dimensions=grade.dimensions,
              note=grade.note(judge.name), judge_serve=judge)
    judged.setdefault(result.subject, []).append(grade.score)


def _live_outcome(parameters: dict[str, Any], tasks: tuple[PlanningTask, ...], graded: list[GradedPlan],
                  inputs: list[tuple[str, str]], judged: dict[str, list[float]], tally: dict[str, int],
                  judge: Serve | None, out: Path) -> RunOutcome:
    report = build_report(graded, inputs)
    report["live"] = {"serves": parameters["serves"], "judge": judge.name if judge else None,
                      "judge_scores": {serve: round(sum(s) / len(s), 4) for serve, s in sorted(judged.items())},
                      **tally}
    json_text = render_json(report)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / REPORT_JSON, json_text)
    markdown = render_markdown(report)
    if judge is not None:
        markdown += "\n## Judge\n\n" + "".join(
            f"- {serve}: {score:.4f} (judge {judge.name}, {PLANNING.id}; pending review)\n"
            for serve, score in report["live"]["judge_scores"].items()) + \
            f"- harness errors: {tally['judge_errors']} judge answers could not be read\n"
    _write(out / REPORT_MARKDOWN, markdown)
    floor = parameters.get("min_quality")
    gate = None if floor is None else bool(report["serves"]) and all(
        row["overall"] >= floor for row in report["serves"])
    lines = [f"{row['rank']}. {row['serve']}: {row['overall']:.4f} structural over {row['plans']} plans"
             + (f", judge {report['live']['judge_scores'][row['serve']]:.4f}"
                if row["serve"] in report["live"]["judge_scores"] else "")
             for row in report["serves"]]
    if tally["harness_errors"]:
        lines.append(f"harness errors: {tally['harness_errors']} plans could not be generated (not graded)")
    if judge is not None:
        count = sum(len(scores) for scores in judged.values())
        lines.append(f"judge {judge.name}: {count} plans graded (pending review: they count once accepted), "
                     f"{tally['judge_errors']} answers that were not the rubric's JSON (harness errors)")
    if floor is not None:
        lines.append(f"gate: every serve at least {floor:.2f}: {'passed' if gate else 'FAILED'}")
    lines.append(f"report: {out / REPORT_MARKDOWN}")
    summary = {"serves": {row["serve"]: row["overall"] for row in report["serves"]}, "plans": len(graded),
               "tasks": len(tasks), "live": True, "judge": report["live"], "report_json": str(out / REPORT_JSON),
               "report_markdown": str(out / REPORT_MARKDOWN), "lines": lines}
    return RunOutcome(summary, gate_passed=gate)
