"""Live calibration end to end: requests through Anvil under Daphne are sampled, a scripted judge grades them,
the grades wait for review and move the candidate once accepted; the sampled text is never in the database
or the logs, and turning sampling off leaves no sample in Redis."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from evals.calibration import drain_samples, set_sampling
from evals.models import CalibrationSetting, EvalResult, EvalRun, Grade
from evals.review import accept_grade, review_queue
from inference import calibration
from inference.keys import create_key
from routing.models import ProfileEntry
from routing.verify import Answer
from serves.models import Serve
from tests.support.live import live_anvil, scripted_upstream, until_routed
from tests.support.profiles import allow_tiers
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def talker_url(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def judge_url(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs, force_scenario="judge") as url:
        yield url


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    # Every logger at DEBUG: whatever any part of Anvil logs, the sampled text must not be in it.
    with live_anvil(module_logs, ANVIL_LOG_LEVEL="DEBUG") as url:
        yield url


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    yield client
    client.close()


def calibration_keys(store: redis.Redis, what: str = "*") -> list[bytes]:
    return list(store.scan_iter(match=f"{settings.ANVIL_REDIS_PREFIX}:calibration:{what}", count=1000))


def sampled_talker(anvil: str, talker_url: str, judge_url: str) -> str:
    """A serve sampled at 100 % in chat, judged by another; returns an API key once Anvil routes to it."""
    Serve.objects.create(name="talker", tier="fast", engine="vllm", base_url=f"{talker_url}/v1", served_model="t")
    Serve.objects.create(name="judge", tier="heavy", engine="vllm", base_url=f"{judge_url}/v1", served_model="j")
    # Allowed: streams commit at once (no accumulator but the sampling one) and whole answers are not
    # verified, so the sampled text comes only from the calibration hook.
    allow_tiers("fast", "heavy")
    set_sampling("talker", "chat", 1.0, judge="judge", by="test")
    key = create_key(f"k{uuid.uuid4().hex[:6]}").secret
    until_routed(anvil, key, {"talker": "allow"})
    return key


def ask(anvil: str, key: str, text: str, *, stream: bool) -> httpx.Response:
    body = {"model": "talker", "stream": stream, "messages": [{"role": "user", "content": text}]}
    with httpx.stream("POST", f"{anvil}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}"}) as response:
        response.read()
    assert response.status_code == 200, response.text
    assert response.headers["x-anvil-work-class"] == "chat" and response.headers["x-anvil-served-by"] == "talker"
    return response


def until_sampling(anvil: str, key: str, store: redis.Redis, text: str) -> None:
    """Anvil's web process sees the setting within its snapshot interval: ask until a sample arrives."""
    wait_for(lambda: ask(anvil, key, text, stream=False) and calibration_keys(store, "sample:*"), 20,
             "the web process to sample the serve")
    wait_for(lambda: not drain_samples().busy and not calibration_keys(store, "sample:*"), 20,
             "the first samples to be graded")


def test_sampled_live_answers_are_judged_and_their_text_is_kept_nowhere(
        anvil: str, talker_url: str, judge_url: str, store: redis.Redis, module_logs: Path,
        caplog: pytest.LogCaptureFixture, settings: object) -> None:
    settings.ANVIL_PROFILE_MIN_SAMPLES = 1  # type: ignore[attr-defined]
    caplog.set_level(logging.DEBUG)
    secret = f"the okapi-{uuid.uuid4().hex[:12]} migration"
    key = sampled_talker(anvil, talker_url, judge_url)
    until_sampling(anvil, key, store, f"Tell me one fact about {secret}.")
    httpx.delete(f"{judge_url}/_requests", timeout=5)
    graded_before = Grade.objects.filter(source="calibration").count()

    ask(anvil, key, f"Tell me one fact about {secret}.", stream=True)
    ask(anvil, key, f"And another fact about {secret}?", stream=False)
    samples = wait_for(lambda: len(calibration_keys(store, "sample:*")) == 2 and calibration_keys(store, "sample:*"),
                       10, "both answers to be sampled")
    for sample in samples:  # waiting in Redis with a TTL of at most an hour
        assert 0 < store.ttl(sample) <= 3600

    report = drain_samples()
    assert (report.graded, report.harness_errors) == (2, 0), report
    assert not calibration_keys(store, "sample:*")  # deleted once graded
    # The judge got the sampled request and the answer, streamed or whole, as text.
    asked = [json.dumps(seen["body"]) for seen in httpx.get(f"{judge_url}/_requests", timeout=5).json()]
    assert len(asked) == 2 and all(secret in body and "tok0 tok1" in body for body in asked)
    assert all('"json_schema"' in body and '"correctness"' in body for body in asked)  # the answer rubric

    grades = list(Grade.objects.filter(source="calibration").order_by("pk"))[graded_before:]
    assert [(g.score, g.review_status, g.judge_serve.name) for g in grades] == [(0.8, "pending", "judge")] * 2
    assert {g.pk for g in grades} <= set(review_queue().values_list("pk", flat=True))
    run = EvalRun.objects.get(kind="calibration", target_name="talker")
    assert run.status == "succeeded" and run.summary["graded"] == Grade.objects.filter(source="calibration").count()
    assert set(EvalResult.objects.filter(run=run).values_list("output", flat=True)) == {""}
    assert ProfileEntry.objects.filter(profile="candidate", subject="talker").count() == 0  # pending: not counted

    operator = get_user_model().objects.create_user("ops")
    for grade in Grade.objects.filter(source="calibration"):
        accept_grade(grade.pk, operator)
    cell = ProfileEntry.objects.get(profile="candidate", kind="serve", subject="talker", work_class="chat")
    assert cell.quality == 0.8 and cell.samples == Grade.objects.filter(source="calibration").count()

    # No prompt text at rest: not in any table, not in any log line.
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert "okapi" not in dump.getvalue()
    anvil_logs = "".join(log.read_text(errors="replace") for log in module_logs.glob("anvil-*.log"))
    assert "GET /readyz" in anvil_logs or anvil_logs.strip()  # the process did log
    assert "okapi" not in anvil_logs
    assert "okapi" not in caplog.text


def test_turning_sampling_off_deletes_the_waiting_samples(anvil: str, talker_url: str, judge_url: str,
                                                          store: redis.Redis) -> None:
    key = sampled_talker(anvil, talker_url, judge_url)
    until_sampling(anvil, key, store, "Say hello.")
    for index in range(3):
        ask(anvil, key, f"Say hello, number {index}.", stream=bool(index % 2))
    wait_for(lambda: len(calibration_keys(store, "sample:*")) == 3, 10, "three samples waiting for the judge")
    assert calibration_keys(store, "queue:*")

    out = io.StringIO()
    call_command("calibration", "off", "talker", stdout=out)
    assert "sampling off for 1 setting(s) of talker" in out.getvalue()
    assert CalibrationSetting.objects.get(serve__name="talker", work_class="chat").rate == 0
    assert calibration_keys(store) == []  # no sample, no queue, no registry entry

    # A web process that has not seen the change yet may still hand over a sample: the next drain deletes it.
    async def stale_web_process() -> None:
        calibration.offer("talker", "", "chat", {"messages": [{"role": "user", "content": "late"}]}, Answer("hi"))
        await calibration.settle()

    asyncio.run(stale_web_process())
    assert calibration_keys(store, "sample:*")
    assert drain_samples().purged == 1
    assert calibration_keys(store) == []


def test_the_admin_switch_refuses_a_self_judge_and_turning_off_deletes_samples(store: redis.Redis) -> None:
    talker = Serve.objects.create(name="talker", tier="fast", engine="vllm", base_url="http://127.0.0.1:9/v1",
                                  served_model="t")
    judge = Serve.objects.create(name="judge", tier="heavy", engine="vllm", base_url="http://127.0.0.1:9/v1",
                                 served_model="j")
    admin = Client(HTTP_HOST="localhost")
    admin.force_login(get_user_model().objects.create_superuser("ops", "", "pw"))
    form = {"serve": talker.pk, "work_class": "chat", "rate": "0.01"}
    refused = admin.post("/admin/evals/calibrationsetting/add/", {**form, "judge_serve": talker.pk})
    assert refused.status_code == 200 and "never judges its own answers" in refused.content.decode()
    assert admin.post("/admin/evals/calibrationsetting/add/", {**form, "judge_serve": judge.pk}).status_code == 302
    setting = CalibrationSetting.objects.get()
    assert (setting.rate, setting.judge_serve, setting.updated_by) == (0.01, judge, "admin:ops")
    assert "1.00%" in admin.get("/admin/evals/calibrationsetting/").content.decode()

    async def sampled() -> None:
        calibration.offer("talker", "", "chat", {"messages": [{"role": "user", "content": "hi"}]}, Answer("hello"))
        await calibration.settle()

    asyncio.run(sampled())
    assert len(calibration_keys(store, "sample:*")) == 1
    admin.post("/admin/evals/calibrationsetting/", {"action": "turn_off", "_selected_action": [setting.pk]})
    setting.refresh_from_db()
    assert setting.rate == 0 and calibration_keys(store) == []
