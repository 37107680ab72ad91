"""python manage.py runeval: exit statuses, the progress bar, targets and their hints, the Celery path."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command

from evals.models import EvalResult, EvalRun
from evals.runs import RUNNERS, RunnerSpec, register
from serves.models import Serve
from tests.support.celery_worker import celery_worker
from tests.support.processes import ROOT, child_env, free_port, manage, running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def targeted() -> Iterator[str]:
    register(RunnerSpec("reach", "tests.evals.reachability_runner", "is the target up?", needs_target=True))
    yield "reach"
    RUNNERS.pop("reach")


def runeval(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(manage("runeval", *args), cwd=ROOT, env=child_env(PYTHONHASHSEED=hash_seed),
                          capture_output=True, text=True, timeout=120)


def test_exit_status_says_done_gate_failed_run_failed_or_bad_input(tmp_path: Path) -> None:
    done = runeval("planning", "--out", str(tmp_path / "a"), hash_seed="1")
    assert done.returncode == 0, done.stderr
    assert "planning run" in done.stdout and "succeeded" in done.stdout
    assert "[#" not in done.stderr  # stderr is a pipe, not a terminal: no progress bar

    gate = runeval("planning", "--out", str(tmp_path / "b"), "--min-quality", "0.9", hash_seed="2")
    assert gate.returncode == 3 and "the gate failed" in gate.stderr
    # A different hash seed, the same bytes: nothing depends on set or dict order.
    assert (tmp_path / "a" / "planning-report.json").read_bytes() == \
        (tmp_path / "b" / "planning-report.json").read_bytes()
    assert (tmp_path / "a" / "planning-report.md").read_bytes() == (tmp_path / "b" / "planning-report.md").read_bytes()

    failed = runeval("planning", "--out", str(tmp_path / "c"), "--fixtures", str(tmp_path / "missing"))
    assert failed.returncode == 1 and "no such directory" in failed.stderr

    bad = runeval("planning", "--min-quality", "2")
    assert bad.returncode == 2 and "min_quality is a number from 0 to 1" in bad.stderr
    assert list(EvalRun.objects.order_by("pk").values_list("status", flat=True)) == [
        "succeeded", "gate_failed", "failed"]  # bad input made no run at all


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    err, out = Terminal(), io.StringIO()
    call_command("runeval", "planning", "--out", str(tmp_path), stdout=out, stderr=err)
    drawn = err.getvalue()
    assert drawn.startswith("\r\x1b[K[....") and drawn.endswith("\r\x1b[K[" + "#" * 30 + "] 12/12 succeeded\n")
    assert drawn.count("\n") == 1  # one line, redrawn in place
    assert "postgres-cutover / claude" in drawn  # the case under way
    quiet = Terminal()
    call_command("runeval", "planning", "--out", str(tmp_path), "--no-progress", stdout=out, stderr=quiet)
    assert quiet.getvalue() == ""


def test_serve_targets_resolve_from_the_serves_table(targeted: str) -> None:
    Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:1/v1", served_model="m")
    with pytest.raises(CommandError, match=r"unknown serve 'nope'\n  hint: known serves: fast") as unknown:
        call_command("runeval", targeted, "--serve", "nope", stdout=io.StringIO())
    assert unknown.value.returncode == 2
    with pytest.raises(CommandError, match="either --serve or --base-url") as both:
        call_command("runeval", targeted, "--serve", "fast", "--base-url", "http://x/v1", "--model", "m")
    assert both.value.returncode == 2
    with pytest.raises(CommandError, match="a target is needed"):
        call_command("runeval", targeted, "--base-url", "http://x/v1")
    assert not EvalRun.objects.exists()


def test_a_serve_that_is_down_gets_the_command_that_starts_it(targeted: str) -> None:
    Serve.objects.create(name="fast", tier="fast", container="vllm-fast", port=free_port(), served_model="m",
                         compose_file="compose/docker-compose.yml", compose_service="fast")
    with pytest.raises(CommandError) as down:
        call_command("runeval", targeted, "--serve", "fast", stdout=io.StringIO())
    assert down.value.returncode == 1
    assert "fast does not answer (ConnectError" in str(down.value)
    assert "hint: start it with: python manage.py serves up fast" in str(down.value)
    run = EvalRun.objects.get()
    assert (run.status, run.target_name) == ("failed", "fast")


def test_a_base_url_target_that_answers_passes(targeted: str, tmp_path: Path, logs_dir: Path) -> None:
    port = free_port()
    (tmp_path / "models").write_text('{"data": []}')  # GET /models, as a static file
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    out = io.StringIO()
    with running(argv, child_env(), logs_dir / "http.log"):
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/models").status_code == 200, 15, "the file server")
        call_command("runeval", targeted, "--base-url", f"http://127.0.0.1:{port}", "--model", "m", stdout=out)
    assert f"m @ http://127.0.0.1:{port} answers" in out.getvalue()
    result = EvalResult.objects.get()
    assert result.subject == ""  # a bare base URL is no serve: it never reaches the quality profile


@pytest.mark.slow
def test_queue_hands_the_run_to_a_real_celery_worker(logs_dir: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    with celery_worker(logs_dir):
        call_command("runeval", "planning", "--out", str(tmp_path), "--queue", stdout=out)
        run = EvalRun.objects.get()
        assert out.getvalue().strip() == f"queued planning run {run.pk}"
        assert run.celery_task_id
        wait_for(lambda: EvalRun.objects.get(pk=run.pk).status == "succeeded", 60, "the worker to run it")
    assert (tmp_path / "planning-report.json").exists()
    assert EvalResult.objects.filter(run=run).count() == 12
