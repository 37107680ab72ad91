"""Live progress: runs publish what they write to a channel-layer group; /ws/evals/ relays it to staff pages."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.core.management import call_command

from evals.models import EvalRun
from evals.progress_feed import PROGRESS_GROUP, ProgressPublisher
from evals.runs import Progress, create_run, execute_run
from evals.tasks import run_eval
from tests.evals.console import operator_client

pytestmark = pytest.mark.django_db(transaction=True)


def listening() -> str:
    """A channel in the progress group, as a page's socket would have."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(PROGRESS_GROUP, channel)
    return channel


def received(channel: str, until_finished: bool = True, quiet_after: float = 0.3) -> list[dict[str, Any]]:
    """What reached the channel: up to a finished run's message, or until nothing came for ``quiet_after``."""
    layer = get_channel_layer()

    async def drain() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 10 if until_finished else quiet_after)
            except TimeoutError:
                if until_finished:
                    raise
                return got
            assert message["type"] == "eval.progress"
            got.append(message["progress"])
            if until_finished and message["progress"]["finished"]:
                return got

    return async_to_sync(drain)()


def test_the_celery_task_publishes_a_runs_progress_to_its_end(tmp_path: Path) -> None:
    channel = listening()
    run = create_run("planning", parameters={"out": str(tmp_path)})
    assert run_eval(run.pk)["status"] == "succeeded"  # the task's body, run here
    messages = received(channel)
    first, last = messages[0], messages[-1]
    assert (first["run"], first["kind"], first["status"], first["done"], first["total"]) == (
        run.pk, "planning", "running", 0, 12)
    assert {k: last[k] for k in ("status", "done", "total", "percent", "finished")} == {
        "status": "succeeded", "done": 12, "total": 12, "percent": 100, "finished": True}
    assert all(m["run"] == run.pk for m in messages)


def test_a_run_whose_gate_fails_is_never_published_as_succeeded(tmp_path: Path) -> None:
    channel = listening()
    run = create_run("planning", parameters={"out": str(tmp_path), "min_quality": 0.9})  # fast and heavy are under
    assert run_eval(run.pk)["status"] == "gate_failed"
    messages = received(channel)
    assert [m["status"] for m in messages if m["finished"]] == ["gate_failed"]
    assert "succeeded" not in {m["status"] for m in messages}
    last = messages[-1]
    assert (last["status_label"], last["gate"], last["percent"]) == ("gate failed", "failed", 100)


def test_runeval_publishes_too(tmp_path: Path) -> None:
    channel = listening()
    call_command("runeval", "planning", "--out", str(tmp_path), stdout=io.StringIO(), stderr=io.StringIO())
    run = EvalRun.objects.get()
    last = received(channel)[-1]
    assert (last["run"], last["status"], last["percent"]) == (run.pk, "succeeded", 100)


def test_only_persisted_progress_is_published() -> None:
    channel = listening()
    publish = ProgressPublisher()
    publish(Progress(7, "planning", "running", 1, 12, "case 1", persisted=False))
    publish(Progress(7, "planning", "running", 2, 12, "case 2", persisted=True))
    assert received(channel, until_finished=False) == [
        {"type": "progress", "run": 7, "kind": "planning", "status": "running", "status_label": "running",
         "done": 2, "total": 12, "note": "case 2", "percent": 17, "finished": False, "gate": "pending"}]


def test_a_channel_layer_that_is_down_never_fails_or_stalls_a_run(settings: Any, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [f"unix://{tmp_path}/no-redis.sock"]}}}
    run = create_run("planning", parameters={"out": str(tmp_path / "out")})
    with caplog.at_level(logging.WARNING, logger="evals.progress_feed"):
        finished = execute_run(run.pk, listeners=[ProgressPublisher()])
    assert finished.status == "succeeded"
    warnings = [r.getMessage() for r in caplog.records if r.name == "evals.progress_feed"]
    assert len(warnings) == 1 and f"live progress of eval run {run.pk} is not published" in warnings[0]


def test_after_a_failure_the_publisher_backs_off_but_still_tries_the_final_status() -> None:
    tried: list[str] = []

    class UnreachableLayer:  # the network edge: a channel layer whose Redis is down
        async def group_send(self, group: str, message: dict[str, Any]) -> None:
            tried.append(message["progress"]["status"])
            raise ConnectionError("redis is down")

    now = [0.0]
    publish = ProgressPublisher(clock=lambda: now[0], layer=UnreachableLayer())
    publish(Progress(1, "planning", "running", 1, 4, "", True))
    now[0] = 10.0
    publish(Progress(1, "planning", "running", 2, 4, "", True))  # within the back-off: not tried
    publish(Progress(1, "planning", "succeeded", 4, 4, "", True))  # the final status: tried anyway
    now[0] = 41.0
    publish(Progress(1, "planning", "running", 3, 4, "", True))  # the back-off is over: tried again
    assert tried == ["running", "succeeded", "running"]


# --- the websocket ------------------------------------------------------------
def socket_session(cookie: str | None, script: Any) -> Any:
    from anvil_site.asgi import application

    async def go() -> Any:
        headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        communicator = WebsocketCommunicator(application, "/ws/evals/", headers=headers)
        connected, _ = await communicator.connect(timeout=5)
        try:
            return connected, (await script(communicator) if connected else None)
        finally:
            await communicator.disconnect()

    return async_to_sync(go)()


def test_the_socket_refuses_anonymous_visitors() -> None:
    connected, _ = socket_session(None, None)
    assert connected is False


def test_the_socket_sends_a_snapshot_then_live_progress_to_an_operator(tmp_path: Path) -> None:
    ops = operator_client()
    run = EvalRun.objects.create(kind="planning", status="running", progress_done=3, progress_total=12,
                                 progress_note="case 3")

    async def script(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
        await communicator.send_json_to({"type": "watch", "runs": [run.pk, 999999, "junk"]})
        snapshot = await communicator.receive_json_from(timeout=5)
        await sync_to_async(ProgressPublisher())(Progress(run.pk, "planning", "running", 9, 12, "case 9", True))
        live = await communicator.receive_json_from(timeout=5)
        return [snapshot, live]

    connected, (snapshot, live) = socket_session(f"sessionid={ops.cookies['sessionid'].value}", script)
    assert connected is True
    assert (snapshot["run"], snapshot["status"], snapshot["done"], snapshot["percent"], snapshot["note"]) == (
        run.pk, "running", 3, 25, "case 3")
    assert (live["run"], live["done"], live["percent"], live["note"]) == (run.pk, 9, 75, "case 9")
