"""runeval preflight against real serves: a scripted upstream that does what it is asked (the gate
passes, the tool batch shares its prefix), the in-worker HRM demo model (the gate fails, its tool checks
are skipped: it does not call tools), and the lockout of issue 18: checks that could not run are harness
errors, never zero scores, so the default preflight cannot lock out the demo model."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evals.errors import NothingToPromote
from evals.models import EvalResult, EvalRun, Grade
from evals.profile_loop import insufficient_cells, promote, refresh_candidate
from evals.runs import create_run, execute_run
from evals.targets import resolve_target
from inference.keys import create_key
from routing.models import ProfileEntry
from serves.inference_workers import register_worker
from serves.models import Serve
from tests.support.live import hrm_worker, live_anvil, scripted_upstream, until_routed
from tests.support.processes import child_env, manage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DEMO_CONTEXT = 512  # models/hrm-demo's max_seq_len


@pytest.fixture(scope="module")
def diligent(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, force_scenario="diligent") as url:
        yield url


@pytest.fixture(scope="module")
def hrm(module_logs: Path) -> Iterator[int]:
    """The demo model's worker, shared by the module's tests; each registers it as a serve again."""
    with hrm_worker(module_logs) as (port, _process):
        yield port


def test_a_serve_that_answers_well_passes_the_gate(diligent: str) -> None:
    httpx.delete(f"{diligent}/_requests")
    Serve.objects.create(name="good", tier="fast", engine="vllm", base_url=f"{diligent}/v1", served_model="m",
                         context_limit=8192)
    run = execute_run(create_run("preflight", target=resolve_target(serve="good"),
                                 parameters={"tool_batch": 4, "needle_depths": [0.1, 0.3, 0.5, 0.7, 0.9]}).pk)
    assert run.status == EvalRun.Status.SUCCEEDED and run.gate_passed is True, run.summary
    assert run.summary["checks"] == {"needle": {"pass": 5}, "tools": {"pass": 4}, "json": {"pass": 1},
                                     "coding": {"pass": 1}}
    assert run.progress_done == run.progress_total == 11
    # The tool batch went out together, sharing its system prompt and tool catalog.
    seen = httpx.get(f"{diligent}/_requests", timeout=5).json()
    tools = [r["body"] for r in seen if r["body"].get("tools")]
    assert len(tools) == 4 and len({r["messages"][0]["content"] for r in tools}) == 1
    assert len({r["messages"][-1]["content"] for r in tools}) == 4
    # No /tokenize here: the needles were sized by the conservative estimate, within the serve's context.
    needles = EvalResult.objects.filter(run=run, details__check="needle")
    assert {r.details["sizing"]["sized_by"] for r in needles} == {"an estimate (3 characters per token)"}
    assert all(r.details["sizing"]["tokens"] <= 2000 for r in needles)
    # Every check is a verifier grade; the candidate trusts the serve where five samples speak for it.
    assert Grade.objects.filter(result__run=run, score=1.0).count() == 11
    cells = {e.work_class: e.decision for e in ProfileEntry.objects.filter(profile="candidate", subject="good")}
    assert cells == {"long-context": "allow", "bounded-edit": "allow"}
    assert insufficient_cells()[("serve", "good", "chat")].samples == 1  # one JSON check is no verdict


def test_the_hrm_demo_fails_the_gate_and_its_tool_checks_are_skipped(hrm: int) -> None:
    register_worker("hrm-demo", hrm, "hrm-demo", tier="fast", context_limit=DEMO_CONTEXT)
    done = subprocess.run(manage("runeval", "preflight", "--serve", "hrm-demo", "--no-progress"),
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr  # 3: the gate failed
    assert "gate failed" in done.stderr and "FAIL" in done.stdout
    run = EvalRun.objects.get(kind="preflight", target_name="hrm-demo")
    assert run.status == EvalRun.Status.GATE_FAILED and run.gate_passed is False
    skipped = EvalResult.objects.filter(run=run, verdict=EvalResult.Verdict.SKIPPED)
    assert skipped.count() == 4 and all(r.details["check"] == "tools" for r in skipped)
    assert EvalResult.objects.filter(run=run, details__check="coding", verdict=EvalResult.Verdict.FAIL).exists()


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs) as url:
        yield url


def test_the_default_preflight_cannot_lock_out_the_demo_model(hrm: int, anvil: str) -> None:
    """The lockout, end to end: the console's default preflight against the demo model, then Promote."""
    register_worker("hrm-demo", hrm, "hrm-demo", tier="fast", context_limit=DEMO_CONTEXT)
    key = create_key("lockout").secret
    until_routed(anvil, key, {"hrm-demo": "allow-with-verify"})  # unmeasured: answered, with verification
    run = execute_run(create_run("preflight", target=resolve_target(serve="hrm-demo")).pk)
    assert run.status in (EvalRun.Status.GATE_FAILED, EvalRun.Status.SUCCEEDED), run.error

    # The needles were sized with the worker's own tokenizer and fit its context, answer included.
    needles = list(EvalResult.objects.filter(run=run, details__check="needle"))
    assert len(needles) == 3
    for needle in needles:
        sizing = needle.details["sizing"]
        assert sizing["sized_by"].startswith("the serve's /tokenize") and sizing["context_limit"] == DEMO_CONTEXT
        assert needle.verdict in ("pass", "fail"), needle.error  # they ran: no context error this time
        assert needle.prompt_tokens + 32 <= DEMO_CONTEXT
    # Whatever could not run is a harness error and has no grade; nothing else is graded 0 for it.
    assert not Grade.objects.filter(result__run=run, result__verdict__in=["harness_error", "error"]).exists()

    # Three needles, one JSON check, one coding check: no cell has the five samples a verdict needs.
    assert not ProfileEntry.objects.filter(profile="candidate", subject="hrm-demo").exists()
    thin = {key[2]: cell.samples for key, cell in insufficient_cells().items() if key[1] == "hrm-demo"}
    assert thin["long-context"] == 3 and thin["bounded-edit"] == 1

    # So promoting changes nothing for routing.
    with pytest.raises(NothingToPromote):
        promote(promoted_by="ops")
    assert not ProfileEntry.objects.filter(profile="live").exists()
    until_routed(anvil, key, {"hrm-demo": "allow-with-verify"})

    # A needle longer than the context is not sent: its checks are harness errors, not zero scores.
    long = execute_run(create_run("preflight", target=resolve_target(serve="hrm-demo"),
                                  parameters={"needle_ctx": 2000, "checks": ["needle"]}).pk)
    refused = EvalResult.objects.filter(run=long)
    assert {r.verdict for r in refused} == {"harness_error"} and refused.count() == 3
    assert all("does not fit the context of 512 tokens" in r.error and r.prompt_tokens is None for r in refused)
    assert not Grade.objects.filter(result__run=long).exists()
    assert long.status == EvalRun.Status.GATE_FAILED
    assert any(line.endswith("-> FAIL (no check ran)") for line in long.summary["lines"])


def test_a_serve_with_a_tiny_context_gets_harness_errors_not_zero_scores(module_logs: Path) -> None:
    """No tokenizer to size with and a context smaller than any check: every request is refused for length."""
    with scripted_upstream(module_logs, force_scenario="error400") as tiny:
        Serve.objects.create(name="tiny", tier="fast", engine="vllm", base_url=f"{tiny}/v1", served_model="t")
        run = execute_run(create_run("preflight", target=resolve_target(serve="tiny")).pk)
    results = EvalResult.objects.filter(run=run)
    assert {r.verdict for r in results} == {"harness_error"} and results.count() == 9  # 3 needles, 4 tools, 2
    assert all("maximum context length is 8 tokens" in r.error and r.details["harness"] == "refused" for r in results)
    assert all("sized at" in r.error for r in results if r.details["check"] == "needle")
    assert not Grade.objects.filter(result__run=run).exists()
    assert run.summary["harness_errors"] == 9 and run.summary["ran"] == 0
    refresh_candidate(floor=1)  # even a floor of one sample finds nothing to count
    assert not ProfileEntry.objects.filter(subject="tiny").exists() and not insufficient_cells()


def test_a_check_that_outlasts_our_own_timeout_is_a_harness_error(module_logs: Path) -> None:
    with scripted_upstream(module_logs, force_scenario="hang") as stuck:
        Serve.objects.create(name="stuck", tier="fast", engine="vllm", base_url=f"{stuck}/v1", served_model="s")
        run = execute_run(create_run("preflight", target=resolve_target(serve="stuck"),
                                     parameters={"checks": ["json", "coding"], "timeout": 1}).pk)
    results = EvalResult.objects.filter(run=run)
    assert [(r.verdict, r.details["harness"]) for r in results] == [("harness_error", "timeout")] * 2
    assert all("no answer within the harness's timeout" in r.error for r in results)
    assert not Grade.objects.filter(result__run=run).exists() and run.status == EvalRun.Status.GATE_FAILED


def test_an_anthropic_serve_is_evaluated_through_the_front_door(diligent: str) -> None:
    Serve.objects.create(name="claude", tier="cloud", engine="anthropic", dialect="anthropic",
                         base_url=f"{diligent}/v1", served_model="c")
    run = execute_run(create_run("preflight", target=resolve_target(serve="claude")).pk)
    assert run.status == EvalRun.Status.FAILED
    assert "speaks anthropic" in run.error and "--base-url http://127.0.0.1:8000/v1 --model claude" in run.error
