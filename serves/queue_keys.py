"""Where a serve's queue lives in Redis (``inference.serve_queue`` runs it; loads, the watch and the admin read it).

Per serve ``…:q:<serve>:``: ``leases`` (zset lease -> expiry), ``lkeys`` (lease -> "key weight granted
estimate"), ``waiting`` (zset ticket -> arrival), ``tickets`` (ticket -> "key weight expiry"), ``usage``
(key -> fair-share usage), ``open`` (exists while the serve is loaded), ``last`` (when a request last
started or ended: what ``ttl`` counts from). Shared: ``…:q:keyqueued`` (key -> its requests waiting).
"""

from __future__ import annotations

import time

import redis
from django.conf import settings


def _base(serve: str) -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:q:{serve}"


def queue_keys(serve: str) -> list[str]:
    """The keys the queue's scripts take, in their order."""
    base = _base(serve)
    return [f"{base}:leases", f"{base}:lkeys", f"{base}:waiting", f"{base}:tickets", f"{base}:usage",
            open_key(serve), f"{settings.ANVIL_REDIS_PREFIX}:q:keyqueued", last_key(serve)]


def open_key(serve: str) -> str:
    return f"{_base(serve)}:open"


def last_key(serve: str) -> str:
    return f"{_base(serve)}:last"


def granted_channel() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:q:granted"


def occupancy(client: redis.Redis, serves: list[str]) -> dict[str, tuple[int, int, float | None]]:
    """(waiting, holding, last request at) per serve, in one round trip."""
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for serve in serves:
            keys = queue_keys(serve)
            pipe.zcard(keys[2])
            pipe.zcount(keys[0], now, "+inf")
            pipe.get(last_key(serve))
        rows = pipe.execute()
    return {serve: (int(rows[3 * i]), int(rows[3 * i + 1]), float(rows[3 * i + 2]) if rows[3 * i + 2] else None)
            for i, serve in enumerate(serves)}


def holding_slots(serve: str) -> int:
    """Requests holding one of ``serve``'s queue slots now (0 when Redis cannot say)."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        return int(client.zcount(queue_keys(serve)[0], time.time(), "+inf"))
    except redis.RedisError:
        return 0
    finally:
        client.close()
