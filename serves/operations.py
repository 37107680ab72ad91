"""What the admin API, the admin pages and ``manage.py serves load|unload`` ask of the pool, in llm-pool's shape.

Synchronous domain functions (the consumers call them through ``database_sync_to_async``): a report
of every serve (state, runtime, capabilities, in flight, load constraints, last error, VRAM), and the
requests to load or unload one. A request checks what it can at once (the model exists, the
overrides are within the serve's load constraints, no opposite operation is under way), records the
new state, and queues the work for the serve's host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import transaction

from anvil_site.task_queue import QueueUnavailable
from serves import residency
from serves.drain_counts import in_flight
from serves.loading import InvalidLoadRequest, check_overrides, transition
from serves.models import ModelState, Runtime, Serve, ServeEvent
from serves.probes import gpus
from serves.queue_keys import occupancy
from serves.tasks import enqueue, enqueue_load

VRAM_DEFINITION = ("GB of GPU memory the serve holds: the delta nvidia-smi showed while it last loaded, else "
                   "its declared vram_gb; null when neither is known")


class ModelNotFound(LookupError):
    pass


class LoadConflict(RuntimeError):
    pass


@dataclass(frozen=True)
class Requested:
    """What a load or unload request did: ``accepted`` (queued: 202) or not (already so: 200)."""

    accepted: bool
    serve: dict[str, Any]


def _find(name: str) -> Serve:
    serve = Serve.objects.filter(name=name).first() or Serve.objects.filter(served_model=name).first()
    if serve is None:
        known = ", ".join(Serve.objects.values_list("name", flat=True)) or "none"
        raise ModelNotFound(f"No serve is named {name!r}. Serves: {known}.")
    return serve


def vram_estimate(serve: Serve) -> float | None:
    return serve.vram_measured_gb if serve.vram_measured_gb is not None else serve.vram_gb


def describe(serve: Serve, inflight: int | None = None, queue: tuple[int, int, float | None] | None = None
             ) -> dict[str, Any]:
    """One serve as the admin API shows it (``queue``: waiting, holding slots, last request, from its queue)."""
    if queue is None:
        queue = queue_occupancy([serve.name]).get(serve.name, (0, 0, None))
    waiting, holding, last = queue
    return {
        "id": serve.name, "state": serve.current_model_state, "runtime": serve.run_by.value,
        "engine": serve.engine, "tier": serve.tier, "served_model": serve.served_model, "enabled": serve.enabled,
        "capabilities": {"modalities": list(serve.modalities or ["text"]), "tools": serve.supports_tools,
                         "thinking": serve.thinking or None, "embeddings": serve.embeddings,
                         "responses_api": serve.responses_api, "context_limit": serve.effective_context_limit},
        "model": serve.public_model, "fallback_to": list(serve.fallback_to or []), "on_demand": serve.on_demand,
        "ttl": serve.ttl, "target_inflight": serve.target_inflight, "max_queue": serve.max_queue,
        "queue_timeout": serve.queue_timeout, "host": serve.host or None, "replicas": serve.replicas,
        "replica_max": serve.replica_max,
        "queue_depth": waiting, "slots_held": holding,
        "last_request_at": last,
        "in_flight": in_flight(serve.name) if inflight is None else inflight,
        "load_constraints": serve.load_constraints or {}, "live_overrides": serve.live_overrides or {},
        "last_error": {"code": serve.load_error, "message": serve.last_error[-2000:]} if serve.load_error else None,
        "state_changed_at": serve.state_changed_at.isoformat() if serve.state_changed_at else None,
        "vram_gb": vram_estimate(serve), "vram_definition": VRAM_DEFINITION, "gpu": serve.gpu or None,
    }


def models_report() -> list[dict[str, Any]]:
    serves = list(Serve.objects.order_by("tier", "name"))
    queues = queue_occupancy([serve.name for serve in serves])
    return [describe(serve, queue=queues.get(serve.name, (0, 0, None))) for serve in serves]


def queue_occupancy(names: list[str]) -> dict[str, tuple[int, int, float | None]]:
    """Each serve's queue as Redis has it; empty when Redis cannot say (the report still answers)."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        return occupancy(client, names)
    except redis.RedisError:
        return {}
    finally:
        client.close()


def request_load(name: str, overrides: Any, requested_by: str) -> Requested:
    """Check and queue a load; a loaded serve is answered as it is (idempotent)."""
    with transaction.atomic():
        serve = _find(name)
        Serve.objects.select_for_update().filter(pk=serve.pk).first()
        serve.refresh_from_db()
        checked = check_overrides(serve, overrides)  # InvalidLoadRequest: a 422
        state = serve.current_model_state
        if state == ModelState.UNLOADING:
            raise LoadConflict(f"{serve.name} is unloading; load it once it is unloaded.")
        if serve.run_by == Runtime.REMOTE or (state == ModelState.LOADED and not checked):
            return Requested(False, describe(serve))
        if state == ModelState.LOADING:
            return Requested(True, describe(serve))  # already under way: one load, not two
        transition(serve, ModelState.LOADING, action="load", requested_by=requested_by, overrides=checked,
                   detail="queued")
    _queue_or_undo(serve, state, "load", requested_by, lambda: enqueue_load(serve.pk, checked, requested_by))
    return Requested(True, describe(serve))


def request_unload(name: str, requested_by: str) -> Requested:
    """Queue an unload (it drains first); an unloaded serve is answered as it is."""
    with transaction.atomic():
        serve = _find(name)
        state = serve.current_model_state
        if serve.run_by == Runtime.REMOTE:
            raise LoadConflict(f"{serve.name} is an upstream Anvil only relays to: it cannot be unloaded.")
        if state == ModelState.LOADING:
            raise LoadConflict(f"{serve.name} is loading; unload it once it is loaded (or failed).")
        if state == ModelState.UNLOADED:
            return Requested(False, describe(serve))
        if state != ModelState.UNLOADING:
            transition(serve, ModelState.UNLOADING, action="unload", requested_by=requested_by, detail="queued")
    _queue_or_undo(serve, state, "unload", requested_by, lambda: enqueue("unload", [serve.pk], requested_by))
    return Requested(True, describe(serve))


def _queue_or_undo(serve: Serve, before: str, action: str, requested_by: str, queue: Callable[[], None]) -> None:
    """Queue the work once the new state is committed; if the queue does not take it, put the state back
    (a load nobody will run must not read ``loading`` forever) and say so."""
    try:
        queue()
    except QueueUnavailable as exc:
        transition(serve, ModelState(before), action=action, requested_by=requested_by,
                   outcome=ServeEvent.Outcome.FAILED, detail=f"not queued: {exc}")
        raise


def gpu_memory_report() -> dict[str, Any]:
    """The residency ledger: per device (declared ``[[gpu]]`` or nvidia-smi's) its capacity and residents with
    their footprints; nvidia-smi's live figures ("unknown" without it); per serve its VRAM estimate."""
    found = gpus()
    serves = [{"id": serve.name, "gpu": serve.gpu or None, "state": serve.current_model_state,
               "vram_gb": vram_estimate(serve),
               "source": "measured" if serve.vram_measured_gb is not None else
               ("declared" if serve.vram_gb is not None else "unknown")}
              for serve in Serve.objects.exclude(runtime=Runtime.REMOTE).order_by("name")
              if serve.run_by != Runtime.REMOTE]
    return {
        "devices": [ledger.as_dict() for ledger in residency.ledgers()],
        "gpus": [{"index": g.index, "uuid": g.uuid, "total_mib": g.total_mib, "used_mib": g.used_mib}
                 for g in found] if found else "unknown",
        "serves": serves, "vram_definition": VRAM_DEFINITION,
    }


__all__ = ["InvalidLoadRequest", "LoadConflict", "ModelNotFound", "Requested", "gpu_memory_report",
           "models_report", "request_load", "request_unload"]
