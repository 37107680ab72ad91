"""runeval planning: the structural rubric, byte-identical reports, and the rows a run leaves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evals.models import EvalCase, EvalResult, Grade
from evals.plan_rubric import DIMENSIONS, Requirement, grade_plan, parse_sections
from evals.profile_loop import insufficient_cells, refresh_candidate
from evals.runners.planning import FIXTURES, REPORT_JSON, REPORT_MARKDOWN
from evals.runs import create_run, execute_run
from routing.models import ProfileEntry
from serves.models import Serve

REQUIREMENTS = (Requirement("R1", "back up first", ("backup",)), Requirement("R2", "drain", ("drain",)))

GOOD = """# Plan

## Steps
1. Take a backup with `pg_dump` (about 2 GiB).
2. After step 1, drain the workers for at most 120 s.
3. Once drained, switch `DATABASE_URL`.
4. Restart, then watch `anvil_requests_total`.

## Risks
- The dump is slow.
- A worker keeps writing.
- The new database is smaller than expected.

## Rollback
- Point `DATABASE_URL` back.
- Restore the backup.

## Verification
- Row counts are identical.
- p95 latency within 10%.
- `manage.py check` passes.
"""


def run_planning(out: Path, **parameters: object) -> tuple[bytes, bytes, dict[str, object]]:
    run = execute_run(create_run("planning", parameters={"out": str(out), **parameters}).pk)
    assert run.status == "succeeded", run.error
    return (out / REPORT_JSON).read_bytes(), (out / REPORT_MARKDOWN).read_bytes(), run.summary


def test_a_complete_plan_scores_full_marks_on_every_dimension() -> None:
    score = grade_plan(GOOD, REQUIREMENTS)
    assert score.dimensions == dict.fromkeys(DIMENSIONS, 1.0)
    assert score.overall == 1.0 and score.missing == ()


def test_each_dimension_falls_when_its_structure_is_missing() -> None:
    vague = GOOD.replace("`pg_dump` (about 2 GiB)", "the usual tool").replace(" for at most 120 s", "")
    assert grade_plan(vague, REQUIREMENTS).dimensions["concreteness"] == 0.5  # 2 of 4 steps still name an artefact
    no_rollback = GOOD.split("## Rollback")[0] + "If it fails we revert.\n## Verification" + GOOD.split(
        "## Verification")[1]
    assert grade_plan(no_rollback, REQUIREMENTS).dimensions["risk"] == 0.5 + 0.5 * 0.25  # mentioned in passing only
    bullets = GOOD.replace("1. ", "- ").replace("2. ", "- ").replace("3. ", "- ").replace("4. ", "- ")
    assert grade_plan(bullets, REQUIREMENTS).dimensions["sequencing"] == 0.5  # dependencies, but no order
    unchecked = GOOD.split("## Verification")[0]
    assert grade_plan(unchecked, REQUIREMENTS).dimensions["verification"] == 0.0
    drainless = GOOD.replace("drain the workers", "pause the workers").replace("Once drained", "Then")
    found = grade_plan(drainless, REQUIREMENTS)
    assert found.missing == ("R2",) and found.dimensions["coverage"] == 0.5


def test_requirement_terms_match_whole_words_plurals_included() -> None:
    requirements = (Requirement("R1", "", ("token bucket",)), Requirement("R2", "", ("drain",)))
    assert grade_plan("We keep token buckets in Redis; drainage is a different thing.", requirements).missing == ("R2",)


def test_bold_lines_and_trailing_colons_are_headings_too() -> None:
    sections = parse_sections("**Risks**\n- one\n\nRollback:\n- two\n")
    assert [(s.heading, sorted(s.categories), len(s.items)) for s in sections] == [
        ("Risks", ["risk"], 1), ("Rollback", ["rollback"], 1)]


@pytest.mark.django_db
def test_a_re_run_writes_byte_identical_reports(tmp_path: Path) -> None:
    first = run_planning(tmp_path / "one")
    second = run_planning(tmp_path / "two")
    again = run_planning(tmp_path / "one")  # over its own earlier report
    assert first[0] == second[0] == again[0]
    assert first[1] == second[1] == again[1]
    assert first[2]["report_sha256"] == second[2]["report_sha256"]
    report = json.loads(first[0])
    assert [row["serve"] for row in report["serves"]] == ["claude", "heavy", "fast"]
    assert report["dimensions"] == list(DIMENSIONS)
    assert "| 1 | claude | 4 |" in first[1].decode()


@pytest.mark.django_db
def test_the_report_does_not_depend_on_where_the_fixtures_live(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "elsewhere")
    assert run_planning(tmp_path / "a")[0] == run_planning(tmp_path / "b", fixtures=str(tmp_path / "elsewhere"))[0]


@pytest.mark.django_db
def test_a_changed_plan_changes_the_report(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "data")
    before = run_planning(tmp_path / "a", fixtures=str(tmp_path / "data"))[0]
    plan = tmp_path / "data" / "postgres-cutover" / "plans" / "fast.md"
    plan.write_text(plan.read_text() + "\n## Rollback\n- Point DATABASE_URL back at SQLite.\n- Keep the backup.\n")
    after = json.loads(run_planning(tmp_path / "b", fixtures=str(tmp_path / "data"))[0])
    assert after != json.loads(before)
    task = next(t for t in after["tasks"] if t["task"] == "postgres-cutover")
    fast = next(p for p in task["plans"] if p["serve"] == "fast")
    assert fast["dimensions"]["risk"] == 0.5 and "R5" not in fast["missing_requirements"]


@pytest.mark.django_db
def test_a_run_stores_a_result_and_a_verifier_grade_per_plan_and_feeds_the_planning_cells(tmp_path: Path) -> None:
    heavy = Serve.objects.create(name="heavy", tier="heavy", base_url="http://127.0.0.1:1/v1", served_model="q")
    run_planning(tmp_path)
    results = EvalResult.objects.filter(run__kind="planning")
    assert results.count() == 12 and {r.work_class for r in results} == {"planning"}
    assert EvalCase.objects.filter(suite__name="planning-bakeoff").count() == 4
    grades = Grade.objects.filter(result__in=results)
    assert grades.count() == 12 and {(g.source, g.grader) for g in grades} == {("verifier", "plan-rubric/1")}
    assert all(set(g.dimensions) == set(DIMENSIONS) for g in grades)
    # Four plans per serve are under the default floor of five samples: insufficient data, no verdict yet.
    assert not ProfileEntry.objects.filter(profile="candidate").exists()
    assert {key[1]: thin.samples for key, thin in insufficient_cells().items()} == {"claude": 4, "heavy": 4, "fast": 4}
    refresh_candidate(floor=4)
    cells = {e.subject: e for e in ProfileEntry.objects.filter(profile="candidate", work_class="planning")}
    assert {name: cell.decision for name, cell in cells.items()} == {
        "claude": "allow", "heavy": "deny", "fast": "deny"}
    assert cells["heavy"].samples == 4 and cells["heavy"].fingerprint == heavy.fingerprint()
    assert not ProfileEntry.objects.filter(profile="live").exists()


@pytest.mark.django_db
def test_the_gate_asks_every_graded_serve_for_the_floor(tmp_path: Path) -> None:
    passed = execute_run(create_run("planning", parameters={"out": str(tmp_path), "only": ["claude"],
                                                            "min_quality": 0.9}).pk)
    failed = execute_run(create_run("planning", parameters={"out": str(tmp_path), "min_quality": 0.9}).pk)
    assert (passed.status, passed.gate_passed) == ("succeeded", True)
    assert (failed.status, failed.gate_passed) == ("gate_failed", False)
    assert "gate: every serve at least 0.90: FAILED" in failed.summary["lines"]


@pytest.mark.django_db
def test_malformed_fixtures_fail_the_run_naming_the_file(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "data")
    (tmp_path / "data" / "heavy-model-swap" / "task.json").write_text('{"id": "heavy-model-swap", "requirements": []}')
    run = execute_run(create_run("planning", parameters={"out": str(tmp_path / "out"),
                                                         "fixtures": str(tmp_path / "data")}).pk)
    assert run.status == "failed"
    assert run.error == "heavy-model-swap/task.json: requirements must be a non-empty list"
    assert not (tmp_path / "out").exists()
