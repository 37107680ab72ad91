"""Requests in flight per serve, as the web processes write them to Redis (``inference.inflight``) and an
unload reads them: one hash per serve, ``…:inflight:<serve>``, a field per web process holding
``"<count> <written at>"``. A field older than ``STALE_SECONDS`` is a process that died mid-request (a
live one rewrites its non-zero counts every ``HEARTBEAT_SECONDS``) and is not counted.
"""

from __future__ import annotations

import time

import redis
from django.conf import settings

FLUSH_SECONDS = 0.05  # how late a web process writes a change
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


def inflight_key(serve: str) -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:inflight:{serve}"


def live_total(fields: dict[bytes, bytes], now: float) -> int:
    """The sum of the fields written in the last ``STALE_SECONDS``."""
    total = 0
    for value in fields.values():
        try:
            count, written = value.split()
            if now - float(written) <= STALE_SECONDS:
                total += max(int(count), 0)
        except ValueError:
            continue
    return total


def in_flight(serve: str) -> int:
    """Requests the web processes hold at ``serve`` now; 0 when Redis cannot say."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        return live_total(client.hgetall(inflight_key(serve)), time.time())
    except redis.RedisError:
        return 0
    finally:
        client.close()
