"""Loading and unloading models: the model state machine, driven through a serve's runtime.

    unloaded -> loading -> loaded -> unloading -> unloaded
                   \\-> failed (start_failed, ready_timeout, exited, out_of_memory), with the log's tail

A load ends only when the serve is ready: its health route answers and its ``/v1/models`` lists the
served model, within ``ready_timeout``. A process that exits while loading is ``failed`` with the
tail of its log; one that dies once loaded is noticed by ``watch`` (every few seconds under beat).
An unload waits for the requests in flight (bounded by ``drain_timeout``), then stops the serve.

Every transition is a ``write_state`` (so the catalog reloads), a ``ServeEvent``, a line on the
terminal, and a publish to the Redis mirror (so every web process sees it within a second).
Loads and unloads claim the serve like every lifecycle operation; a claim held by a worker that
died on this host is taken over, so a redelivered load completes or fails cleanly, and the process
runtime's adoption means there are never two processes for one serve.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from django.utils import timezone

from serves import model_states, pool_stats, residency
from serves.claims import OperationResult, claim, release
from serves.drain_counts import FLUSH_SECONDS, in_flight
from serves.models import LoadError, ModelState, Runtime, Serve, ServeEvent
from serves.probes import gpu_of
from serves.queue_keys import holding_slots
from serves.runtimes import ServeRuntime, Started, runtime_for
from serves.runtimes.presets import PresetError, check_preset_args
from serves.upstream_keys import upstream_auth_headers

log = logging.getLogger(__name__)

Outcome = ServeEvent.Outcome
DRAIN_SETTLE_SECONDS = model_states.CHECK_SECONDS + FLUSH_SECONDS + 0.1
READY_POLL_SECONDS = 0.1  # Anvil's part of a load is one poll interval at most
READY_PROBE_TIMEOUT = httpx.Timeout(2.0, connect=1.0)
_OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemoryError|CUDA error: out of memory|cannot allocate memory|"
                            r"std::bad_alloc|\bOOM\b", re.IGNORECASE)


class InvalidLoadRequest(ValueError):
    """An override outside the serve's load constraints; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_overrides(serve: Serve, overrides: Any) -> dict[str, Any]:
    """The live overrides of one load, checked against ``load_constraints``; never written to the row."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise InvalidLoadRequest("overrides", "an object of named fields")
    constraints = serve.load_constraints or {}
    for name, value in overrides.items():
        rule = constraints.get(name)
        if not isinstance(rule, dict):
            allowed = ", ".join(sorted(constraints)) or "none"
            raise InvalidLoadRequest(name, f"serve {serve.name} allows no such override at load (it allows: {allowed})")
        _check_rule(name, value, rule)
    if serve.preset:
        try:
            check_preset_args(serve.preset, {**(serve.preset_args or {}), **overrides})
        except PresetError as exc:
            raise InvalidLoadRequest(exc.field.removeprefix("preset_args."), exc.message) from None
    return dict(overrides)


def _check_rule(name: str, value: Any, rule: dict[str, Any]) -> None:
    if "allow" in rule:
        allowed = set(rule["allow"])
        if not isinstance(value, list) or not all(isinstance(item, str) and item in allowed for item in value):
            raise InvalidLoadRequest(name, f"a list drawn from {sorted(allowed)}")
        return
    if "choices" in rule:
        if value not in rule["choices"]:
            raise InvalidLoadRequest(name, f"one of {rule['choices']}")
        return
    low, high = rule.get("min"), rule.get("max")
    integral = all(isinstance(bound, int) for bound in (low, high) if bound is not None)
    kinds = (int,) if integral else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidLoadRequest(name, "an integer" if integral else "a number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidLoadRequest(name, f"from {low} to {high}")


# --- the state machine -------------------------------------------------------------------------------


def transition(serve: Serve, to: ModelState, *, action: str, requested_by: str, outcome: str = Outcome.OK,
               detail: str = "", error_code: str = "", error: str = "", overrides: dict[str, Any] | None = None,
               commands: list[list[str]] | None = None, **extra: Any) -> None:
    """Move ``serve`` to ``to``: the row, its event, the terminal and the Redis mirror."""
    now = timezone.now()
    before = serve.model_state
    fields: dict[str, Any] = {"model_state": to, "state_changed_at": now, **extra}
    if to == ModelState.FAILED:
        fields.update(load_error=error_code, last_error=error[-4000:])
    elif to == ModelState.LOADED:
        fields.update(load_error=LoadError.NONE, last_error="")
    if overrides is not None:
        fields["live_overrides"] = overrides
    Serve.objects.filter(pk=serve.pk).write_state(**fields)
    for name, value in fields.items():
        setattr(serve, name, value)
    ServeEvent.objects.create(serve=serve, action=action, requested_by=requested_by[:150], finished_at=now,
                              outcome=outcome, state_before=before, state_after=to, commands=commands or [],
                              output_tail=error[-4000:], detail=(detail or error)[:1000])
    model_states.publish(serve.name, to, error_code, detail or error, at=now.timestamp())
    log.info("serve %s: %s -> %s%s", serve.name, before, to, f" ({error_code}: {detail})" if error_code else "")


def ready(serve: Serve, client: httpx.Client | None = None) -> bool:
    """The serve answers: its health route (when it has one) and its /v1/models listing the served model.

    ``client``: one kept across a load's polls (a new httpx client costs tens of milliseconds: its
    TLS context), which is Anvil's part of every load."""
    if client is None:
        with httpx.Client(timeout=READY_PROBE_TIMEOUT) as own:
            return ready(serve, own)
    base, root = serve.effective_base_url, serve.server_root
    headers = upstream_auth_headers(serve.dialect, serve.api_key_env)
    try:
        if serve.health_path:
            health = client.get(root + serve.health_path, headers=headers)
            if health.status_code not in (200, 404):  # 404: an engine with no such route (llama.cpp's)
                return False
        models = client.get(base + "/models", headers=headers)
        if models.status_code != 200:
            return False
        listed = models.json().get("data", [])
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return any(isinstance(item, dict) and item.get("id") == serve.served_model for item in listed)


def _used_mib(serve: Serve) -> int | None:
    found = gpu_of(serve.gpu)
    return found.used_mib if found else None


LoadProgress = Callable[[float, float, str], None]  # (seconds waited, ready_timeout, the engine's last log line)


def do_load(serve_id: int, overrides: dict[str, Any] | None, requested_by: str,
            progress: LoadProgress | None = None) -> OperationResult:
    """Load ``serve_id`` and wait until it is ready (or failed); idempotent for a serve already loaded.

    ``progress`` is told, every poll while the engine starts, how long it has waited and what the
    engine last wrote (a terminal's bar; the Celery task passes none)."""
    serve = Serve.objects.get(pk=serve_id)
    if serve.run_by == Runtime.REMOTE:
        return OperationResult(serve.name, "load", Outcome.NOTHING, "an upstream Anvil only relays to is always "
                               "loaded", [], ModelState.LOADED, ModelState.LOADED)
    try:
        overrides = check_overrides(serve, overrides)
    except InvalidLoadRequest as exc:
        return OperationResult(serve.name, "load", Outcome.REFUSED, str(exc), [], serve.model_state,
                               serve.model_state)
    token = claim(serve_id, "load")
    if token is None:
        return OperationResult(serve.name, "load", Outcome.BUSY, "another operation holds this serve", [],
                               serve.model_state, serve.model_state)
    began = time.monotonic()
    try:
        serve.refresh_from_db()
        result = _load(serve, overrides, requested_by, progress)
        if result.outcome in (Outcome.OK, Outcome.FAILED):
            pool_stats.record("load", serve.name, "ok" if result.outcome == Outcome.OK else "failed",
                              time.monotonic() - began)
        return result
    finally:
        release(serve_id, token)


def _load(serve: Serve, overrides: dict[str, Any], requested_by: str,
          progress: LoadProgress | None = None) -> OperationResult:
    runtime = runtime_for(serve)
    before = serve.model_state
    if before == ModelState.LOADED and runtime.observe(serve).running and ready(serve):
        return OperationResult(serve.name, "load", Outcome.NOTHING, "already loaded", [], before, before)
    if before == ModelState.LOADING:  # the request that queued this load recorded the transition already
        Serve.objects.filter(pk=serve.pk).update(live_overrides=overrides)
    else:
        transition(serve, ModelState.LOADING, action="load", requested_by=requested_by, overrides=overrides,
                   detail=f"loading ({serve.run_by})")
    swap_began = time.monotonic()
    room = residency.make_room(serve, swap_began + serve.ready_timeout, do_unload,
                               waiting=(lambda why: progress(time.monotonic() - swap_began,
                                                             float(serve.ready_timeout), why)) if progress else None)
    if room.no_room or room.blocked_by:
        why = room.no_room or f"no room on GPU {serve.gpu} within ready_timeout: {room.describe()}"
        transition(serve, ModelState.FAILED, action="load", requested_by=requested_by, outcome=Outcome.FAILED,
                   error_code=LoadError.NO_ROOM, error=why, detail=why)
        return OperationResult(serve.name, "load", Outcome.FAILED, why, [], before, ModelState.FAILED)
    memory_before = _used_mib(serve)
    started = runtime.start(serve, overrides)
    if not started.ok:
        tail = runtime.log_tail(serve)
        transition(serve, ModelState.FAILED, action="load", requested_by=requested_by, outcome=Outcome.FAILED,
                   error_code=LoadError.START_FAILED, error=f"{started.detail}\n{tail}".strip(),
                   detail=started.detail, commands=started.commands)
        return OperationResult(serve.name, "load", Outcome.FAILED, started.detail, started.commands, before,
                               ModelState.FAILED, tail)
    deadline = time.monotonic() + serve.ready_timeout
    with httpx.Client(timeout=READY_PROBE_TIMEOUT) as probe:
        failed = _wait_ready(serve, runtime, started, probe, deadline, before, requested_by, progress)
    if failed is not None:
        return failed
    memory_after = _used_mib(serve)
    measured = ((memory_after - memory_before) / 1024 if memory_before is not None and memory_after is not None
                and not started.adopted else serve.vram_measured_gb)
    transition(serve, ModelState.LOADED, action="load", requested_by=requested_by,
               detail=started.detail + (f"; {room.describe()}" if room.evict else ""),
               commands=started.commands, vram_measured_gb=measured)
    if room.evict:  # a swap: what the requests waiting for this model waited for, eviction and start together
        pool_stats.record("swap", serve.name, "ok", time.monotonic() - swap_began)
    return OperationResult(serve.name, "load", Outcome.OK, started.detail, started.commands, before, ModelState.LOADED)


def _wait_ready(serve: Serve, runtime: ServeRuntime, started: Started, probe: httpx.Client, deadline: float,
                before: str, requested_by: str, progress: LoadProgress | None) -> OperationResult | None:
    """Poll until ``serve`` is ready (None), or it exited or ran out of time (the failed result)."""
    began = time.monotonic()
    while not ready(serve, probe):
        if progress is not None:
            lines = runtime.log_tail(serve).strip().splitlines()
            progress(time.monotonic() - began, float(serve.ready_timeout), lines[-1] if lines else "")
        observed = runtime.observe(serve)
        if not observed.running and serve.run_by == Runtime.PROCESS:
            tail = runtime.log_tail(serve)
            code = LoadError.OUT_OF_MEMORY if _OUT_OF_MEMORY.search(tail) else LoadError.EXITED
            why = f"{observed.detail} while loading"
            transition(serve, ModelState.FAILED, action="load", requested_by=requested_by, outcome=Outcome.FAILED,
                       error_code=code, error=f"{why}\n{tail}", detail=why, commands=started.commands)
            return OperationResult(serve.name, "load", Outcome.FAILED, why, started.commands, before,
                                   ModelState.FAILED, tail)
        if time.monotonic() > deadline:
            tail = runtime.log_tail(serve)
            why = f"not ready within ready_timeout ({serve.ready_timeout} s); stopped"
            runtime.stop(serve)
            transition(serve, ModelState.FAILED, action="load", requested_by=requested_by, outcome=Outcome.FAILED,
                       error_code=LoadError.READY_TIMEOUT, error=f"{why}\n{tail}", detail=why,
                       commands=started.commands)
            return OperationResult(serve.name, "load", Outcome.FAILED, why, started.commands, before,
                                   ModelState.FAILED, tail)
        time.sleep(READY_POLL_SECONDS)
    return None


def do_unload(serve_id: int, requested_by: str) -> OperationResult:
    """Drain ``serve_id`` (bounded by its drain_timeout), then stop it; idempotent for an unloaded serve."""
    serve = Serve.objects.get(pk=serve_id)
    if serve.run_by == Runtime.REMOTE:
        return OperationResult(serve.name, "unload", Outcome.NOTHING, "an upstream Anvil only relays to cannot be "
                               "unloaded", [], ModelState.LOADED, ModelState.LOADED)
    token = claim(serve_id, "unload")
    if token is None:
        return OperationResult(serve.name, "unload", Outcome.BUSY, "another operation holds this serve", [],
                               serve.model_state, serve.model_state)
    try:
        serve.refresh_from_db()
        runtime = runtime_for(serve)
        before = serve.model_state
        if before in (ModelState.UNLOADED, ModelState.FAILED) and not runtime.observe(serve).running:
            if before == ModelState.FAILED:
                transition(serve, ModelState.UNLOADED, action="unload", requested_by=requested_by,
                           detail="cleared the failure; nothing was running")
            return OperationResult(serve.name, "unload", Outcome.NOTHING, "not loaded", [], before,
                                   ModelState.UNLOADED)
        transition(serve, ModelState.UNLOADING, action="unload", requested_by=requested_by, detail="draining")
        deadline = time.monotonic() + serve.drain_timeout
        if serve.is_queued:
            # Every request reaches it through its queue, which "unloading" shut in Redis as it was written:
            # what holds a slot is all there is to wait for (a request counts in flight only inside one).
            def left_in_flight() -> int:
                return holding_slots(serve.name) + in_flight(serve.name)
        else:
            # A zero is trusted once every web process has seen "unloading" (no new request goes there) and
            # written the counts of the ones it had just started.
            time.sleep(min(DRAIN_SETTLE_SECONDS, serve.drain_timeout))

            def left_in_flight() -> int:
                return in_flight(serve.name)
        while left_in_flight() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        left = left_in_flight()
        drained = time.monotonic() - (deadline - serve.drain_timeout)
        pool_stats.record("drain", serve.name, "timeout" if left else "ok", drained)
        detail = runtime.stop(serve)
        if left:
            detail += f" ({left} requests still in flight after drain_timeout {serve.drain_timeout} s)"
        transition(serve, ModelState.UNLOADED, action="unload", requested_by=requested_by, detail=detail)
        return OperationResult(serve.name, "unload", Outcome.OK, detail, [], before, ModelState.UNLOADED)
    finally:
        release(serve_id, token)


def watch(requested_by: str = "process watch", host: str = "") -> int:
    """Notice, within seconds, a loaded process that died (and a compose serve whose container stopped);
    promote a container brought up by ``serves up`` once it answers. Only the serves of ``host`` (this
    machine: "" for the stack's own, an agent's name on its host): another machine's processes are not
    this one's to see."""
    noticed = 0
    for serve in Serve.objects.filter(enabled=True, model_state=ModelState.LOADING, host=host).exclude(container=""):
        if serve.run_by == Runtime.COMPOSE and serve.busy_token == "" and ready(serve):
            transition(serve, ModelState.LOADED, action="watch", requested_by=requested_by,
                       detail="the container answers")
            noticed += 1
    for serve in Serve.objects.filter(enabled=True, model_state=ModelState.LOADED, host=host).exclude(
            runtime=Runtime.REMOTE):
        if serve.run_by == Runtime.REMOTE:
            continue
        runtime = runtime_for(serve)
        observed = runtime.observe(serve)
        if observed.running:
            continue
        tail = runtime.log_tail(serve)
        code = LoadError.OUT_OF_MEMORY if _OUT_OF_MEMORY.search(tail) else LoadError.EXITED
        transition(serve, ModelState.FAILED, action="watch", requested_by=requested_by, outcome=Outcome.FAILED,
                   error_code=code, error=f"{observed.detail} while loaded\n{tail}", detail=observed.detail)
        noticed += 1
    return noticed
