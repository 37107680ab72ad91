"""Reaching one serve through the pool: its queue, a load on demand, and heartbeats while a stream waits.

``reaching(serve, …)`` is what the candidates loop (``inference/serving.py``) holds around an attempt:

* A serve with no queue (no ``target_inflight``, not loaded on demand, no ``ttl``) costs a dict update: the
  request is counted in flight (what an unload drains) and goes on.
* Otherwise the request takes a slot in the serve's queue (``inference/serve_queue.py``), waiting for
  one if none is free, within the serve's ``queue_timeout``.
* A serve loaded on demand that is not loaded gets its load asked for (once: the load's claim makes a
  second ask a no-op), and the request waits in its queue until the load ends. A load that fails ends the
  wait with the load's error code, in the client's dialect.
* A stream that waits is sent an SSE comment (``: keep-alive``) every ``ANVIL_QUEUE_HEARTBEAT`` seconds:
  the headers go out with the first one, so an error after that arrives as an error event.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from anvil_site import tracing
from anvil_site.metrics import QUEUE_WAIT
from anvil_site.task_queue import QueueUnavailable
from inference.attempt import EVENT_STREAM, STREAM_HEADERS, ResponseSink
from inference.auth import Principal
from inference.errors import FrontDoorError, Unavailable
from inference.inflight import in_flight
from inference.serve_queue import UNLIMITED, QueueSpec, Wait, Waiter, serve_queues
from serves.catalog import ServeView, current_serves
from serves.operations import LoadConflict, request_load

log = logging.getLogger(__name__)

HEARTBEAT = b": keep-alive\n\n"


LOADING_RETRY_AFTER = 5


def not_loaded(model: str, state: str, error_code: str = "") -> FrontDoorError:
    """A request naming a model that is not loaded: 503, saying when to retry or how to load it."""
    if state == "loading":
        return Unavailable(f"The model {model!r} is loading; retry shortly.", code="model_loading",
                           headers=[(b"retry-after", str(LOADING_RETRY_AFTER).encode())])
    if error_code == "host_silent":
        return Unavailable(f"The model {model!r} is unknown (host_silent): the host agent that runs it stopped "
                           "beating, so nothing drives it. Requests go to it again once the agent is back "
                           "(manage.py runhost on that host).", code="model_not_loaded",
                           headers=[(b"retry-after", b"5")])
    why = f"{state} ({error_code})" if error_code else state
    return Unavailable(f"The model {model!r} is not loaded ({why}). Load it with POST /v1/admin/models/{model}/load "
                       f"(a key with the admin scope) or `python manage.py serves load {model}`.",
                       code="model_not_loaded")


def queue_spec(serve: ServeView) -> QueueSpec:
    return QueueSpec(serve.name, serve.model, serve.target_inflight or UNLIMITED, gated=serve.runtime != "remote",
                     max_queue=serve.max_queue, timeout=serve.queue_timeout, fail_open=serve.loaded)


def waiter_of(principal: Principal | None) -> Waiter:
    if principal is None:
        return Waiter("anonymous")
    return Waiter(str(principal.key_id), principal.weight, principal.max_queued)


@dataclass
class Reach:
    """What reaching the serve took, for the decision record."""

    wait: Wait = field(default_factory=Wait)
    load_asked: bool = False

    def as_log(self) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if self.wait.queued:
            entry["queued_ms"] = round(self.wait.seconds * 1000, 3)
            entry["queue_depth"] = self.wait.depth
        if self.load_asked:
            entry["loaded_on_demand"] = True
        return entry


class _Waiting:
    """The ticks of one request waiting for ``serve``: ask for its load, notice a failed one, keep a stream alive."""

    def __init__(self, serve: ServeView, sink: ResponseSink, stream: bool, reach: Reach) -> None:
        self.serve, self.sink, self.stream, self.reach = serve, sink, stream, reach
        self.since = time.time()
        self.asked_at = float("-inf")
        self.beats = 0

    async def tick(self, waited: float) -> None:
        current = next((s for s in await current_serves() if s.name == self.serve.name), None)
        if current is None:
            raise Unavailable(f"The model {self.serve.model!r} was removed or disabled while this request waited.",
                              code="model_unavailable")
        if current.model_state == "failed" and current.state_changed_at > self.since:  # a failure since it came
            code = current.load_error or "load_failed"
            raise Unavailable(f"The model {self.serve.model!r} could not be loaded ({code}); its log is at "
                              f"/v1/admin/models. Retry once the cause is fixed.", code=code)
        if current.load_error == "host_silent":  # its agent stopped beating: no load or answer comes until it is back
            raise not_loaded(self.serve.model, current.model_state, current.load_error)
        if current.on_demand and current.model_state in ("unloaded", "failed"):
            await self.ask_for_load()
        elif not current.on_demand and current.model_state not in ("loaded", "loading"):
            raise Unavailable(f"The model {self.serve.model!r} is {current.model_state} and is not loaded on demand.",
                              code="model_not_loaded")
        if self.stream and waited >= (self.beats + 1) * settings.ANVIL_QUEUE_HEARTBEAT:
            await self.heartbeat()

    async def ask_for_load(self) -> None:
        now = time.monotonic()
        if now - self.asked_at < settings.ANVIL_ON_DEMAND_RETRIGGER:
            return
        self.asked_at = now
        try:
            await database_sync_to_async(request_load)(self.serve.name, {}, "on demand")
            self.reach.load_asked = True
        except LoadConflict:
            pass  # unloading: asked again on a later tick, once it is unloaded
        except QueueUnavailable as exc:
            log.warning("could not ask for %s's load on demand: %s", self.serve.name, exc)

    async def heartbeat(self) -> None:
        self.beats += 1
        if not self.sink.response_started:
            await self.sink.send_headers(status=200, headers=self.sink.base_headers(EVENT_STREAM) + STREAM_HEADERS)
        await self.sink.send_body(HEARTBEAT, more_body=True)


@contextlib.asynccontextmanager
async def reaching(serve: ServeView, sink: ResponseSink, principal: Principal | None, *, stream: bool,
                   reach: Reach) -> AsyncIterator[None]:
    """Hold the right to send one attempt to ``serve`` (see the module's docstring)."""
    if not serve.queued:
        async with in_flight().holding(serve.name):  # what an unload of this serve drains
            yield
        return
    waiting = _Waiting(serve, sink, stream, reach)
    if serve.on_demand and not serve.loaded and serve.model_state != "loading":
        await waiting.ask_for_load()
    async with serve_queues().slot(queue_spec(serve), waiter_of(principal), reach.wait, waiting.tick):
        if reach.wait.queued:
            QUEUE_WAIT.labels(serve.name).observe(reach.wait.seconds)
            tracing.past_span("anvil.queue_wait", reach.wait.seconds,
                              {"anvil.serve": serve.name, "anvil.queue_depth": reach.wait.depth})
        async with in_flight().holding(serve.name):
            yield
