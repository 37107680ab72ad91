"""The planning bake-off report: per serve and per task, as JSON and as a markdown table.

Pure functions of the graded plans: the same grades give the same bytes (sorted
keys and rows, rounded numbers, no clock, no run id, no absolute path), which is
what lets a re-run be compared with ``cmp``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from evals.plan_rubric import DIMENSIONS, PLACES, RUBRIC, PlanScore

DIMENSION_RULES = {
    "coverage": "share of the task's requirements the plan addresses (any of a requirement's terms, whole words)",
    "concreteness": "share of steps naming a `code span`, a path or file, or a quantity with a unit; "
                    "scaled down under 4 steps",
    "risk": "half for risk items (3 for full marks), half for rollback items (2 for full marks; "
            "a rollback mentioned only in passing earns 0.25)",
    "verification": "half for verification items (3 for full marks), half for measurable ones "
                    "(a number, a comparison, p95, a `command`; 2 for full marks)",
    "sequencing": "half for numbered steps in sequence (at least 3), half for explicit dependencies "
                  "between steps (after, once, before, step N, …; 3 for full marks)",
}


@dataclass(frozen=True)
class GradedPlan:
    task_id: str
    task_title: str
    serve: str
    score: PlanScore


def _mean(values: list[float]) -> float:
    return round(math.fsum(values) / len(values), PLACES)


def build_report(graded: list[GradedPlan], inputs: list[tuple[str, str]]) -> dict[str, Any]:
    """The report as data; ``inputs`` are (file name relative to the fixtures, sha256) pairs."""
    by_serve: dict[str, list[PlanScore]] = defaultdict(list)
    by_task: dict[str, list[GradedPlan]] = defaultdict(list)
    titles: dict[str, str] = {}
    for plan in graded:
        by_serve[plan.serve].append(plan.score)
        by_task[plan.task_id].append(plan)
        titles[plan.task_id] = plan.task_title
    serves: list[dict[str, Any]] = []
    for serve, scores in by_serve.items():
        serves.append({
            "serve": serve, "plans": len(scores), "overall": _mean([s.overall for s in scores]),
            "dimensions": {name: _mean([s.dimensions[name] for s in scores]) for name in DIMENSIONS},
        })
    serves.sort(key=lambda row: (-row["overall"], row["serve"]))
    for rank, row in enumerate(serves, start=1):
        row["rank"] = rank
    tasks = []
    for task_id in sorted(by_task):
        plans = sorted(by_task[task_id], key=lambda p: (-p.score.overall, p.serve))
        tasks.append({"task": task_id, "title": titles[task_id], "plans": [
            {"serve": p.serve, "overall": p.score.overall, "dimensions": dict(p.score.dimensions),
             "missing_requirements": list(p.score.missing), "counts": dict(sorted(p.score.counts.items()))}
            for p in plans]})
    return {"rubric": RUBRIC, "dimensions": list(DIMENSIONS), "rules": DIMENSION_RULES,
            "inputs": [{"file": name, "sha256": digest} for name, digest in sorted(inputs)],
            "serves": serves, "tasks": tasks}


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _number(value: float) -> str:
    return f"{value:.{PLACES}f}"


def _table(header: list[str], rows: list[list[str]], numeric: range) -> list[str]:
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def render_markdown(report: dict[str, Any]) -> str:
    plans = sum(row["plans"] for row in report["serves"])
    lines = [f"# Planning bake-off ({report['rubric']})", "",
             f"Structural re-grade of {plans} plans on {len(report['tasks'])} tasks from the committed "
             "eval data (`runeval planning`). Every score is 0..1; a plan's overall score is the mean "
             "of its five dimensions, a serve's the mean over its plans.", "", "## By serve", ""]
    header = ["rank", "serve", "plans", "overall", *report["dimensions"]]
    rows = [[str(row["rank"]), row["serve"], str(row["plans"]), _number(row["overall"]),
             *(_number(row["dimensions"][name]) for name in report["dimensions"])] for row in report["serves"]]
    lines += _table(header, rows, numeric=range(2, len(header)))
    lines += ["", "## By task"]
    for task in report["tasks"]:
        lines += ["", f"### {task['task']}: {task['title']}", ""]
        header = ["serve", "overall", *report["dimensions"], "missing requirements"]
        rows = [[p["serve"], _number(p["overall"]), *(_number(p["dimensions"][name]) for name in report["dimensions"]),
                 ", ".join(p["missing_requirements"]) or "-"] for p in task["plans"]]
        lines += _table(header, rows, numeric=range(1, len(header) - 1))
    lines += ["", "## How the dimensions are scored", ""]
    lines += [f"- **{name}**: {report['rules'][name]}" for name in report["dimensions"]]
    lines += ["", "## Inputs", ""]
    lines += [f"- `{row['file']}` sha256 `{row['sha256'][:16]}`" for row in report["inputs"]]
    return "\n".join(lines) + "\n"
