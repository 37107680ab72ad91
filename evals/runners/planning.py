"""``runeval planning``: re-grade the committed planning bake-off, offline and byte-reproducibly.

Reads ``evals/fixtures/planning/TASK/{task.json, plans/SERVE.md}`` (see the
README there), grades every plan with the structural rubric
(``evals/plan_rubric.py``), stores one result and one verifier grade per plan,
and writes ``planning-report.json`` and ``planning-report.md``: the same
fixtures give the same bytes on every re-run. The grades feed the quality
profile's ``planning`` cells of each serve.

Optional gate: ``--min-quality Q`` passes when every graded serve's mean is at
least Q (with ``--only SERVE`` to ask about one serve).
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

from evals.errors import BadParameters, FixtureError
from evals.models import EvalCase, EvalResult, EvalSuite, RunKind
from evals.parameters import from_options, number, reject_unknown
from evals.plan_rubric import DIMENSIONS, RUBRIC, Requirement, grade_plan
from evals.planning_report import GradedPlan, build_report, render_json, render_markdown
from evals.runs import RunContext, RunOutcome
from routing.models import WorkClass

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "planning"
SUITE = "planning-bakeoff"
REPORT_JSON = "planning-report.json"
REPORT_MARKDOWN = "planning-report.md"
PARAMETERS = ("fixtures", "out", "only", "min_quality")


def default_out_dir() -> Path:
    return Path(settings.VAR_DIR) / "evals" / "planning"


# --- the command line and the parameters ---------------------------------------
def add_arguments(parser: CommandParser) -> None:
    parser.add_argument("--fixtures", type=Path, help=f"the bake-off data (default: {FIXTURES})")
    parser.add_argument("--out", type=Path, help="where the report goes (default: VAR_DIR/evals/planning)")
    parser.add_argument("--only", action="append", metavar="SERVE", help="grade only this serve's plans (repeatable)")
    parser.add_argument("--min-quality", type=float, metavar="Q",
                        help="gate: every graded serve's mean must be at least Q (0..1)")


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
    return clean


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
