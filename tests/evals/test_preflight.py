"""runeval preflight against real serves: a scripted upstream that does what it is asked (the gate
passes, the tool batch shares its prefix) and the in-worker HRM demo model (the gate fails, its
tool checks are skipped: it does not call tools)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evals.models import EvalResult, EvalRun, Grade
from evals.runs import create_run, execute_run
from evals.targets import resolve_target
from routing.models import ProfileEntry
from serves.models import Serve
from serves.workers import register_worker
from tests.support.live import hrm_worker, scripted_upstream
from tests.support.processes import child_env, manage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def diligent(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, force_scenario="diligent") as url:
        yield url


def test_a_serve_that_answers_well_passes_the_gate(diligent: str) -> None:
    httpx.delete(f"{diligent}/_requests")
    Serve.objects.create(name="good", tier="fast", engine="vllm", base_url=f"{diligent}/v1", served_model="m",
                         context_limit=8192)
    run = execute_run(create_run("preflight", target=resolve_target(serve="good"),
                                 parameters={"tool_batch": 3}).pk)
    assert run.status == EvalRun.Status.SUCCEEDED and run.gate_passed is True, run.summary
    assert run.summary["checks"] == {"needle": {"pass": 3}, "tools": {"pass": 3}, "json": {"pass": 1},
                                     "coding": {"pass": 1}}
    assert run.progress_done == run.progress_total == 8
    # The tool batch went out together, sharing its system prompt and tool catalog.
    seen = httpx.get(f"{diligent}/_requests", timeout=5).json()
    tools = [r["body"] for r in seen if r["body"].get("tools")]
    assert len(tools) == 3 and len({r["messages"][0]["content"] for r in tools}) == 1
    assert len({r["messages"][-1]["content"] for r in tools}) == 3
    # Every check is a verifier grade; the candidate profile now trusts the serve where it was measured.
    assert Grade.objects.filter(result__run=run, score=1.0).count() == 8
    cells = {e.work_class: e.decision for e in ProfileEntry.objects.filter(profile="candidate", subject="good")}
    assert cells == {"long-context": "allow", "bounded-edit": "allow", "chat": "allow"}


def test_the_hrm_demo_fails_the_gate_and_its_tool_checks_are_skipped(module_logs: Path) -> None:
    with hrm_worker(module_logs) as (port, _process):
        register_worker("hrm-demo", port, "hrm-demo", tier="fast", context_limit=512)
        done = subprocess.run(manage("runeval", "preflight", "--serve", "hrm-demo", "--no-progress"),
                              env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr  # 3: the gate failed
    assert "gate failed" in done.stderr and "FAIL" in done.stdout
    run = EvalRun.objects.get(kind="preflight", target_name="hrm-demo")
    assert run.status == EvalRun.Status.SUCCEEDED and run.gate_passed is False
    skipped = EvalResult.objects.filter(run=run, verdict=EvalResult.Verdict.SKIPPED)
    assert skipped.count() == 4 and all(r.details["check"] == "tools" for r in skipped)
    assert EvalResult.objects.filter(run=run, details__check="coding", verdict=EvalResult.Verdict.FAIL).exists()


def test_an_anthropic_serve_is_evaluated_through_the_front_door(diligent: str) -> None:
    Serve.objects.create(name="claude", tier="cloud", engine="anthropic", dialect="anthropic",
                         base_url=f"{diligent}/v1", served_model="c")
    run = execute_run(create_run("preflight", target=resolve_target(serve="claude")).pk)
    assert run.status == EvalRun.Status.FAILED
    assert "speaks anthropic" in run.error and "--base-url http://127.0.0.1:8000/v1 --model claude" in run.error
