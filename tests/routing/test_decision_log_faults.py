"""The decision log under faults: records the database would refuse, and a Redis that restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from asgiref.sync import async_to_sync
from django.db import transaction

from anvil_site.launcher import embedded_redis_spec, redis_answers
from inference.keys import create_key
from routing.decision_log import DecisionLog, drain_decisions, dropped_key, queue_key
from routing.models import DecisionRecord
from tests.support.asgi import call
from tests.support.processes import running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def empty_queue(redis_server: str) -> Iterator[redis.Redis]:
    """The shared test Redis with no decision records queued (an earlier test's are drained first)."""
    drain_decisions()
    DecisionRecord.objects.all().delete()
    client = redis.Redis.from_url(redis_server, socket_timeout=5)
    yield client
    client.close()


def dropped(client: redis.Redis) -> dict[str, int]:
    return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in client.hgetall(dropped_key()).items()}


def test_poison_values_are_made_to_fit_their_columns_when_a_record_is_appended(empty_queue: redis.Redis) -> None:
    log = DecisionLog()
    poison: dict[str, Any] = {
        "id": "not-a-uuid", "request_id": "r-\x00nul", "endpoint": "chat", "requested_model": "x\x00",
        "work_class": "\ud800", "api_key": "k" * 500, "served_by": "fast",
        "notes": ["a\x00b", {"\ud800key": ["deep\x00", float("nan")]}],
        "candidates": [{"serve": "fast\x00", "verdict": "allow", "why": ("t\ud800",)}],
        "attempts": [{"serve": "fast", "outcome": "served\x00", "labels": [object()]}],
        "prompt_tokens": -5, "completion_tokens": 2**40, "bytes_out": "12", "status": 200.0,
        "latency_ms": float("inf"), "ttft_ms": "fast", "created_at": "yesterday",
    }
    also = {"request_id": "r-float", "endpoint": "chat", "prompt_tokens": 3.5, "completion_tokens": "7",
            "status": True, "bytes_out": None, "notes": "one note"}

    async def write() -> None:
        log.append(poison)
        log.append(also)
        assert await log.push() == 2

    async_to_sync(write)()
    assert drain_decisions() == 2  # used to raise DataError / UnicodeEncodeError / IntegrityError, for good
    row = DecisionRecord.objects.get(request_id="r-nul")
    assert (row.requested_model, row.work_class, row.api_key) == ("x", "\ufffd", "k" * 100)
    assert row.candidates == [{"serve": "fast", "verdict": "allow", "why": ["t\ufffd"]}]
    assert row.attempts[0]["outcome"] == "served" and row.attempts[0]["labels"][0].startswith("<object")
    assert row.notes[:2] == ["ab", {"\ufffdkey": ["deep", None]}]
    assert (row.prompt_tokens, row.completion_tokens, row.bytes_out, row.status) == (0, 2**31 - 1, 0, 200)
    assert (row.latency_ms, row.ttft_ms) == (None, None)
    assert any("prompt_tokens -5 is out of range; stored 0" in note for note in row.notes[2:])
    assert any("bytes_out was a str" in note for note in row.notes[2:])
    uuid.UUID(str(row.id))
    other = DecisionRecord.objects.get(request_id="r-float")
    assert (other.prompt_tokens, other.completion_tokens, other.status, other.bytes_out) == (None, None, None, 0)
    assert other.notes[0] == "one note" and len(other.notes) == 4
    assert empty_queue.llen(queue_key()) == 0


def test_a_row_the_database_refuses_is_dropped_alone_counted_and_reported_in_metrics(
        empty_queue: redis.Redis) -> None:
    def line(request_id: str, **extra: Any) -> str:
        return json.dumps({"id": str(uuid.uuid4()), "request_id": request_id, "endpoint": "chat",
                           "created_at": "2025-01-01T00:00:00+00:00", **extra})

    # Pushed raw, past append's sanitiser: 2**70 fits no integer column on SQLite (the driver refuses
    # it) or PostgreSQL (out of range). The poison leads its batch, so every later try runs after a
    # failed statement: inside the outer transaction below, only a savepoint per try keeps the
    # PostgreSQL connection usable.
    before = dropped(empty_queue)
    lines = [line("poison", completion_tokens=2**70), "{not json", *[line(f"good{i}") for i in range(9)],
             line("poison2", prompt_tokens=-(2**70))]
    empty_queue.rpush(queue_key(), *lines)
    with transaction.atomic():
        assert drain_decisions() == 9
    assert sorted(DecisionRecord.objects.values_list("request_id", flat=True)) == [f"good{i}" for i in range(9)]
    assert empty_queue.llen(queue_key()) == 0  # nothing re-queued to fail again on the next drain
    assert drain_decisions() == 0
    after = dropped(empty_queue)
    assert after.get("rejected", 0) - before.get("rejected", 0) == 2
    assert after.get("malformed", 0) - before.get("malformed", 0) == 1

    metrics = call("GET", "/metrics").body.decode()
    assert f'anvil_decisions_dropped_total{{reason="rejected"}} {float(after["rejected"])}' in metrics
    assert f'anvil_decisions_dropped_total{{reason="malformed"}} {float(after["malformed"])}' in metrics


def test_a_nul_in_the_model_name_does_not_stop_the_decision_log(anvil: str, empty_queue: redis.Redis) -> None:
    headers = {"authorization": f"Bearer {create_key(f'k{uuid.uuid4().hex[:6]}').secret}",
               "content-type": "application/json"}
    messages = [{"role": "user", "content": "hi"}]
    poisoned = []
    for model in ("x\x00", "\ud800"):
        body = json.dumps({"model": model, "messages": messages}).encode()  # ASCII: "\u0000", "\ud800"
        answer = httpx.post(f"{anvil}/v1/chat/completions", content=body, headers=headers, timeout=10)
        assert answer.status_code in (400, 404), answer.text  # refused either way; never a 500
        poisoned.append(answer.headers.get("x-request-id", ""))
    later = httpx.post(f"{anvil}/v1/chat/completions", headers=headers, timeout=10,
                       json={"model": "no-such-model", "messages": messages})
    assert later.status_code == 404

    def written() -> DecisionRecord | None:
        drain_decisions()  # raised DataError every time once a NUL was queued
        return DecisionRecord.objects.filter(request_id=later.headers["x-request-id"]).first()

    wait_for(written, 10, "the record of the request after the poisoned ones")
    for record in DecisionRecord.objects.filter(request_id__in=poisoned):
        assert "\x00" not in record.requested_model and "\ud800" not in record.requested_model
    assert empty_queue.llen(queue_key()) == 0


class LoopThread:
    """An event loop in a thread, as a web process has: the decision log's pusher runs on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="decision-log-loop", daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def test_decision_records_survive_a_redis_restart_and_the_outage_is_logged_once(
        tmp_path: Path, logs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="routing.decision_log")
    socket_path, data_dir = tmp_path / "r.sock", tmp_path / "data"
    data_dir.mkdir()
    url = f"unix://{socket_path}"
    log = DecisionLog(redis_url=url)
    appended = 0
    stop_appending = threading.Event()

    def appender(loop: LoopThread) -> None:
        nonlocal appended
        while not stop_appending.wait(0.005):
            record = {"request_id": f"restart-{appended}", "endpoint": "chat", "served_by": "fast"}
            loop.loop.call_soon_threadsafe(log.append, record)
            appended += 1

    def redis_process(log_name: str) -> Any:
        # The launcher's own embedded Redis, flags and all: what a restart of `make run` keeps.
        argv = embedded_redis_spec(socket_path, data_dir).argv
        return running(argv, {}, logs_dir / log_name)

    with LoopThread() as loop:
        thread = threading.Thread(target=appender, args=(loop,), daemon=True)
        with redis_process("redis-1.log"):
            wait_for(lambda: redis_answers(url), 15, "the first Redis")
            thread.start()
            client = redis.Redis.from_url(url, socket_timeout=2)
            wait_for(lambda: client.llen(queue_key()) >= 50, 15, "records waiting in Redis")
            client.close()
        # Redis is down and records keep coming: they wait in the web process, retried with backoff.
        wait_for(lambda: log.failed_pushes >= 3, 15, "three failed pushes")
        with redis_process("redis-2.log"):
            wait_for(lambda: redis_answers(url), 15, "the restarted Redis")
            wait_for(lambda: "reachable again" in caplog.text, 15, "the end of the outage")
            stop_appending.set()
            thread.join(timeout=10)
            wait_for(lambda: not log.queue, 15, "every held record to be pushed")
            # The Celery drain, against this Redis: the records Redis held at the restart are there too.
            wait_for(lambda: drain_decisions(redis_url=url) == 0 and DecisionRecord.objects.filter(
                request_id__startswith="restart-").count() == appended, 30, "every record in the database")

    outage_lines = [r for r in caplog.records if r.name == "routing.decision_log" and r.levelno >= logging.WARNING]
    assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]
    assert "cannot hand records to Redis" in outage_lines[0].getMessage() and outage_lines[0].exc_info is None
    back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(back) == 1 and "delivered" in back[0]
    assert log.failed_pushes < 15  # backoff, not a busy loop against a missing socket
