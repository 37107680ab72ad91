"""The pool's counts for ``/metrics``: loads and drains happen in Celery workers nobody scrapes, so they are
added up in one Redis hash (``…:pool-stats``) that every web process reads at scrape time.

Fields: ``count|<event>|<serve>|<outcome>`` and ``seconds|<event>|<serve>|<outcome>`` (events ``load``,
``drain``). A count is an aid to operators: Redis being away never fails a load.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import redis
import redis.asyncio
from django.conf import settings

from serves.catalog import current_serves
from serves.drain_counts import inflight_key, live_total
from serves.queue_keys import queue_keys

log = logging.getLogger(__name__)


def _key() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:pool-stats"


def record(event: str, serve: str, outcome: str, seconds: float) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.hincrby(_key(), f"count|{event}|{serve}|{outcome}", 1)
            pipe.hincrbyfloat(_key(), f"seconds|{event}|{serve}|{outcome}", max(seconds, 0.0))
            pipe.execute()
    except redis.RedisError:
        log.debug("could not count a %s of %s", event, serve, exc_info=True)
    finally:
        client.close()


def parse(raw: dict[bytes, bytes]) -> dict[str, dict[tuple[str, str], tuple[int, float]]]:
    """event -> (serve, outcome) -> (count, seconds)."""
    out: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0.0]))
    for field, value in raw.items():
        parts = field.decode().split("|")
        if len(parts) != 4:
            continue
        kind, event, serve, outcome = parts
        out[event][(serve, outcome)][0 if kind == "count" else 1] = float(value)
    return {event: {labels: (int(pair[0]), float(pair[1])) for labels, pair in rows.items()}
            for event, rows in out.items()}


async def read_pool_figures() -> tuple[dict[str, tuple[int, int]], dict[str, dict[tuple[str, str], tuple[int, float]]]]:
    """(serve -> (in flight, waiting), the load and drain figures) for ``/metrics``; empty when Redis is away."""
    names = [serve.name for serve in await current_serves()]
    client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                    socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(inflight_key(name))
                pipe.zcard(queue_keys(name)[2])
            pipe.hgetall(_key())
            rows = await pipe.execute()
    except Exception:
        log.debug("pool figures unavailable (Redis)", exc_info=True)
        return {}, {}
    finally:
        await client.aclose()
    now = time.time()
    serves = {name: (live_total(rows[2 * i], now), int(rows[2 * i + 1])) for i, name in enumerate(names)}
    return serves, parse(rows[-1])
