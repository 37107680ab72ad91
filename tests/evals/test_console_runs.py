"""The console's runs page: the list with its progress bars, starting a run from the form, cancelling one."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evals.models import EvalRun
from evals.runs import RUNNERS, RunnerSpec, create_run, register
from serves.models import Serve
from tests.evals.console import operator_client, post_from, text

pytestmark = pytest.mark.django_db

RUNS = "/console/evals/"
START = "/console/evals/runs/start/"
Capture = Callable[..., object]


@pytest.fixture
def ops() -> Client:
    return operator_client()


@pytest.fixture
def targeted() -> Iterator[str]:
    register(RunnerSpec("reach", "tests.evals.reachability_runner", "is the target up?", needs_target=True))
    yield "reach"
    RUNNERS.pop("reach")


def test_anonymous_visitors_and_non_staff_users_are_sent_to_log_in() -> None:
    for path in (RUNS, "/console/evals/runs/1/", "/console/evals/review/", "/console/evals/profile/"):
        answer = Client().get(path)
        assert answer.status_code == 302 and answer["location"].startswith(f"/admin/login/?next={path}"), path
    member = Client()
    member.force_login(get_user_model().objects.create_user("member", "", "pw"))
    assert member.get(RUNS).status_code == 302
    assert not EvalRun.objects.exists()
    assert Client().post(START, {"kind": "planning"}).status_code == 302
    assert not EvalRun.objects.exists()


def test_the_console_home_and_the_admin_index_link_the_eval_pages(ops: Client) -> None:
    for page in ("/", "/admin/"):
        shown = text(ops.get(page))
        for path in (RUNS, "/console/evals/review/", "/console/evals/profile/"):
            assert f'href="{path}"' in shown, (page, path)


def test_the_list_shows_kind_target_status_progress_and_cancel_only_for_unfinished_runs(ops: Client) -> None:
    serve = Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m")
    queued = create_run("planning")
    running = EvalRun.objects.create(kind="preflight", status="running", target_serve=serve, target_name="fast",
                                     progress_done=3, progress_total=12, progress_note="needle at 4k")
    done = EvalRun.objects.create(kind="benchmark", status="gate_failed", base_url="http://127.0.0.1:9/v1",
                                  model="m", progress_done=5, progress_total=5, gate_passed=False)
    passed = EvalRun.objects.create(kind="preflight", status="succeeded", progress_done=8, progress_total=8,
                                    gate_passed=True)
    page = text(ops.get(RUNS))

    def row(run: EvalRun) -> str:
        found = re.search(rf'<tr data-run="{run.pk}".*?</tr>', page, re.S)
        assert found, run
        return found.group(0)

    assert 'aria-valuenow="25"' in row(running) and "3/12" in row(running) and "needle at 4k" in row(running)
    assert ">fast<" in row(running) and ">running<" in row(running)
    assert 'aria-valuenow="100"' in row(done) and "m @ http://127.0.0.1:9/v1" in row(done)
    # A failed gate is the run's status, the same on the list as on its page: never "succeeded" beside it.
    assert '<span class="status gate_failed" data-field="status">gate failed</span>' in row(done)
    assert "succeeded" not in row(done)
    assert ">succeeded<" in row(passed)
    assert '<span class="gate passed" data-field="gate">gate passed</span>' in row(passed)
    assert 'aria-valuenow="0"' in row(queued) and ">queued<" in row(queued)
    assert f"/console/evals/runs/{queued.pk}/cancel/" in row(queued)
    assert f"/console/evals/runs/{running.pk}/cancel/" in row(running)
    assert "/cancel/" not in row(done)
    assert "evals/progress.js" in page  # the bars move over /ws/evals/

    only = text(ops.get(RUNS + "?kind=benchmark"))
    assert f'data-run="{done.pk}"' in only and f'data-run="{queued.pk}"' not in only


def test_starting_a_run_from_the_form_creates_and_enqueues_it(ops: Client, tmp_path: Path,
                                                             django_capture_on_commit_callbacks: Capture) -> None:
    with django_capture_on_commit_callbacks() as enqueued:
        answer = post_from(ops, RUNS, START, {"kind": "planning", "parameters": f'{{"out": "{tmp_path}"}}'})
    run = EvalRun.objects.get()
    assert (run.kind, run.status, run.parameters, run.requested_by) == (
        "planning", "queued", {"out": str(tmp_path)}, "console:ops")
    assert run.celery_task_id and len(enqueued) == 1  # handed to a worker once the row was committed
    assert answer.redirect_chain[-1][0] == RUNS
    assert f"Queued planning run {run.pk}." in text(answer)


def test_a_run_against_a_serve_or_a_base_url(ops: Client, targeted: str) -> None:
    Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="fast-model")
    post_from(ops, RUNS, START, {"kind": targeted, "serve": "fast"})
    post_from(ops, RUNS, START, {"kind": targeted, "base_url": " http://127.0.0.1:7/v1/ ", "model": "m"})
    by_serve, by_url = EvalRun.objects.order_by("pk")
    assert (by_serve.target_name, by_serve.target_serve.name, by_serve.model) == ("fast", "fast", "fast-model")
    assert (by_url.target_name, by_url.base_url, by_url.model) == ("", "http://127.0.0.1:7/v1", "m")


@pytest.mark.parametrize(("data", "status", "shown"), [
    ({"kind": "planning", "parameters": "{not json"}, 400, "not valid JSON"),
    ({"kind": "planning", "parameters": "[1, 2]"}, 400, "parameters are a JSON object"),
    ({"kind": "planning", "parameters": '{"bogus": 1}'}, 400, "hint: known: fixtures, out, only, min_quality"),
    ({"kind": "planning", "parameters": '{"min_quality": 2}'}, 400, "min_quality is a number from 0 to 1"),
    ({"kind": "planning", "base_url": "http://127.0.0.1:9/v1", "model": "m"}, 400, "a planning run takes no target"),
    ({"kind": "nonsense"}, 400, "Select a valid choice"),
])
def test_bad_input_is_shown_on_the_form_and_makes_no_run(ops: Client, data: dict[str, str], status: int,
                                                        shown: str) -> None:
    answer = post_from(ops, RUNS, START, data, follow=False)
    assert answer.status_code == status
    assert shown in text(answer)
    assert not EvalRun.objects.exists()


def test_target_errors_come_with_their_hint(ops: Client, targeted: str) -> None:
    Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m")
    missing = post_from(ops, RUNS, START, {"kind": targeted}, follow=False)
    assert missing.status_code == 400 and "a reach run needs a target" in text(missing)
    half = post_from(ops, RUNS, START, {"kind": targeted, "base_url": "http://127.0.0.1:9/v1"}, follow=False)
    assert "a target is needed" in text(half)
    both = post_from(ops, RUNS, START, {"kind": targeted, "serve": "fast", "model": "m"}, follow=False)
    assert "give either --serve or --base-url with --model, not both" in text(both)
    assert not EvalRun.objects.exists()


def test_an_unknown_serve_is_refused_with_the_known_ones(ops: Client, targeted: str) -> None:
    Serve.objects.create(name="fast", tier="fast", base_url="http://127.0.0.1:9/v1", served_model="m")
    page = text(ops.get(RUNS))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    Serve.objects.filter(name="fast").update(name="renamed")  # gone between drawing the form and sending it
    answer = ops.post(START, {"kind": targeted, "serve": "fast", "csrfmiddlewaretoken": token})
    # The form offers the serves as they are now, so a vanished name is a choice the form refuses.
    assert answer.status_code == 400 and "Select a valid choice" in text(answer)
    assert not EvalRun.objects.exists()


def test_posts_without_a_csrf_token_are_refused(ops: Client) -> None:
    run = create_run("planning")
    assert ops.post(START, {"kind": "planning"}).status_code == 403
    assert ops.post(f"/console/evals/runs/{run.pk}/cancel/").status_code == 403
    assert list(EvalRun.objects.values_list("status", flat=True)) == ["queued"]


def test_cancel_buttons(ops: Client) -> None:
    queued = create_run("planning")
    running = EvalRun.objects.create(kind="planning", status="running")
    finished = EvalRun.objects.create(kind="planning", status="succeeded")

    answer = post_from(ops, RUNS, f"/console/evals/runs/{queued.pk}/cancel/")
    assert f"Run {queued.pk} cancelled." in text(answer)
    answer = post_from(ops, RUNS, f"/console/evals/runs/{running.pk}/cancel/")
    assert "it stops before its next case" in text(answer)
    answer = post_from(ops, f"/console/evals/runs/{finished.pk}/", f"/console/evals/runs/{finished.pk}/cancel/",
                       {"next": f"/console/evals/runs/{finished.pk}/"})
    assert answer.redirect_chain[-1][0] == f"/console/evals/runs/{finished.pk}/"
    assert "had already finished (succeeded)" in text(answer)
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == "cancelled" and running.cancel_requested and running.status == "running"
    assert ops.get(f"/console/evals/runs/{queued.pk}/cancel/").status_code == 405


def test_cancel_never_redirects_off_site(ops: Client) -> None:
    run = create_run("planning")
    answer = post_from(ops, RUNS, f"/console/evals/runs/{run.pk}/cancel/", {"next": "https://evil.example/"},
                       follow=False)
    assert answer["location"] == RUNS
