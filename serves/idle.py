"""``ttl``: a serve idle that long since its last request is unloaded (counted from the last request, not
from the load: llama-swap #588), and the queues' open flags are kept true to the database.

Runs in the watch (beat, every few seconds). Idle means nothing waits in its queue, nothing holds a slot,
and no request is in flight; the last request's time is what its queue recorded (``serves.queue_keys``),
or the load's when no request came since.
"""

from __future__ import annotations

import logging
import time

import redis
from django.conf import settings

from serves import model_states
from serves.drain_counts import in_flight
from serves.models import ModelState, Runtime, Serve
from serves.operations import LoadConflict, request_unload
from serves.queue_keys import occupancy

log = logging.getLogger(__name__)


def unload_idle(now: float | None = None) -> list[str]:
    """Queue the unload of every loaded serve idle past its ttl; the names unloaded."""
    now = time.time() if now is None else now
    loaded = list(Serve.objects.filter(enabled=True, model_state=ModelState.LOADED).exclude(runtime=Runtime.REMOTE))
    loaded = [serve for serve in loaded if serve.run_by != Runtime.REMOTE]
    model_states.reassert_open([serve.name for serve in loaded])
    timed = [serve for serve in loaded if serve.ttl]
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
    unloaded = []
    for serve in timed:
        waiting, holding, last = seen[serve.name]
        loaded_at = serve.state_changed_at.timestamp() if serve.state_changed_at else now
        idle_since = max(last or 0.0, loaded_at)
        if waiting or holding or now - idle_since < (serve.ttl or 0) or in_flight(serve.name):
            continue
        try:
            request_unload(serve.name, f"ttl ({serve.ttl} s idle)")
        except LoadConflict:
            continue
        unloaded.append(serve.name)
    return unloaded
