"""``ttl``: a serve idle that long since its last request is unloaded (counted from the last request, not
from the load: llama-swap #588), longest idle first and never below its model's ``replicas``; and the
queues' open flags are kept true to the database. An on-demand replica of a model that scales out
(``replica_max`` > 1) without a ttl of its own stops after ``ANVIL_REPLICA_TTL`` idle: the extras go.

Runs in the watch (beat, every few seconds). Idle means nothing waits in its queue, nothing holds a slot,
and no request is in flight; the last request's time is what its queue recorded (``serves.queue_keys``),
or the load's when no request came since.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import redis
from django.conf import settings

from serves import model_states
from serves.drain_counts import in_flight
from serves.models import ModelState, Runtime, Serve
from serves.operations import LoadConflict, request_unload
from serves.queue_keys import occupancy
from serves.replicas import bounds_of, models_of

log = logging.getLogger(__name__)


def unload_idle(now: float | None = None) -> list[str]:
    """Queue the unload of every loaded serve idle past its ttl, never taking a model below its ``replicas``;
    the names unloaded."""
    now = time.time() if now is None else now
    enabled = list(Serve.objects.filter(enabled=True).exclude(runtime=Runtime.REMOTE))
    loaded = [serve for serve in enabled if serve.model_state == ModelState.LOADED and serve.run_by != Runtime.REMOTE]
    model_states.reassert_open([serve.name for serve in loaded])
    groups = models_of(enabled)
    timed = [serve for serve in loaded if _ttl(serve, groups[serve.public_model]) is not None]
    if not timed:
        return []
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        seen = occupancy(client, [serve.name for serve in timed])
    except redis.RedisError:
        log.debug("cannot tell which serves are idle (Redis)", exc_info=True)
        return []
    finally:
        client.close()
    resident = Counter(serve.public_model for serve in loaded)
    unloaded = []
    for serve in sorted(timed, key=lambda s: (_idle_since(s, seen[s.name], now), s.name)):  # longest idle first
        idle_since = _idle_since(serve, seen[serve.name], now)
        waiting, holding, _ = seen[serve.name]
        ttl = _ttl(serve, groups[serve.public_model]) or 0
        if waiting or holding or now - idle_since < ttl or in_flight(serve.name):
            continue
        if resident[serve.public_model] <= bounds_of(groups[serve.public_model]).floor:
            continue  # the model's replicas: kept loaded
        try:
            request_unload(serve.name, f"ttl ({ttl} s idle)")
        except LoadConflict:
            continue
        resident[serve.public_model] -= 1
        unloaded.append(serve.name)
    return unloaded


def _ttl(serve: Serve, model: list[Serve]) -> int | None:
    """The serve's ttl; for an on-demand replica of a model that scales out, ``ANVIL_REPLICA_TTL`` when it has none."""
    if serve.ttl is not None:
        return serve.ttl
    if serve.on_demand and bounds_of(model).ceiling > 1:
        return settings.ANVIL_REPLICA_TTL
    return None


def _idle_since(serve: Serve, seen: tuple[int, int, float | None], now: float) -> float:
    loaded_at = serve.state_changed_at.timestamp() if serve.state_changed_at else now
    return max(seen[2] or 0.0, loaded_at)
