"""The request-body bounds in the ASGI application (anvil_site/body_bounds.py), in-process: what the
application behind them is given, and that it never runs for a refused body. End to end, under uvicorn
and Daphne: tests/inference/test_front_door_faults.py. Also the lifespan that uvicorn drives at a stop."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator

from anvil_site.body_bounds import BodyBounds

CAP = 1024


class Downstream:
    """The application behind the bounds (a peer across the ASGI protocol): reads the body, answers 200."""

    def __init__(self) -> None:
        self.runs = 0
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.runs += 1
        while True:
            message = await receive()
            self.received.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(path: str = "/v1/chat/completions", **headers: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]}


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def exchange(app: Any, request: dict[str, Any], messages: list[dict[str, Any]],
             timeout: float = 5) -> tuple[dict[str, Any] | None, bytes]:
    """Send ``messages``; the response's start (None if there is none) and its body."""

    async def go() -> tuple[dict[str, Any] | None, bytes]:
        communicator = ApplicationCommunicator(app, request)
        for message in messages:
            await communicator.send_input(message)
        if messages and messages[-1]["type"] == "http.disconnect":
            await communicator.wait(timeout)
            return None, b""
        start = await communicator.receive_output(timeout)
        answered = b""
        while True:
            message = await communicator.receive_output(timeout)
            answered += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.wait(timeout)
        return start, answered

    return async_to_sync(go)()


def test_a_body_within_the_cap_reaches_the_application_as_it_came() -> None:
    downstream = Downstream()
    parts = [body(b"a" * 600, more=True), body(b"b" * 424)]
    start, answered = exchange(BodyBounds(downstream, CAP, 5), scope(transfer_encoding="chunked"), parts)
    assert start is not None and start["status"] == 200 and answered == b"ok"
    assert downstream.received == parts


def test_a_request_without_a_body_passes_untouched() -> None:
    downstream = Downstream()
    start, _ = exchange(BodyBounds(downstream, CAP, 5), scope(), [body(b"")])
    assert start is not None and start["status"] == 200 and downstream.received == [body(b"")]


def test_a_declared_oversized_body_is_refused_unread_and_the_application_never_runs() -> None:
    downstream = Downstream()
    start, answered = exchange(BodyBounds(downstream, CAP, 5), scope("/v1/messages", content_length="1073741824"),
                               [])  # not a byte of the body is sent
    assert start is not None and start["status"] == 413
    assert (b"connection", b"close") in start["headers"]  # the server drops the rest instead of reading it
    assert json.loads(answered)["error"]["type"] == "request_too_large"  # Anthropic's shape on its path
    assert downstream.runs == 0


def test_a_body_growing_past_the_cap_is_refused_as_it_arrives() -> None:
    downstream = Downstream()
    start, answered = exchange(BodyBounds(downstream, CAP, 5), scope(transfer_encoding="chunked"),
                               [body(b"x" * 1000, more=True), body(b"x" * 1000, more=True)])  # never a last part
    assert start is not None and start["status"] == 413
    assert json.loads(answered)["error"]["code"] == "request_too_large"  # OpenAI's shape elsewhere
    assert downstream.runs == 0


def test_a_body_slower_than_the_deadline_is_408() -> None:
    downstream = Downstream()
    start, answered = exchange(BodyBounds(downstream, CAP, 0.2), scope(content_length="100"),
                               [body(b"{", more=True)])  # and then nothing
    assert start is not None and start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(answered)["error"]["code"] == "request_timeout"
    assert downstream.runs == 0


def test_a_client_that_leaves_before_its_body_is_whole_runs_nothing() -> None:
    downstream = Downstream()
    start, _ = exchange(BodyBounds(downstream, CAP, 5), scope(content_length="100"),
                        [body(b"{", more=True), {"type": "http.disconnect"}])
    assert start is None and downstream.runs == 0


@pytest.mark.django_db
def test_the_lifespans_shutdown_closes_the_relays_upstream_clients() -> None:
    from anvil_site.asgi import application
    from inference.upstream_client import _session

    async def go() -> None:
        client = _session()  # the pooled client this loop's first relayed request would open
        communicator = ApplicationCommunicator(application, {"type": "lifespan", "asgi": {"version": "3.0"}})
        await communicator.send_input({"type": "lifespan.startup"})
        assert await communicator.receive_output(5) == {"type": "lifespan.startup.complete"}
        assert not client.closed
        await communicator.send_input({"type": "lifespan.shutdown"})
        assert await communicator.receive_output(5) == {"type": "lifespan.shutdown.complete"}
        assert client.closed

    async_to_sync(go)()
