"""Requests in flight per serve, counted in Redis across every web process, so an unload can drain.

An attempt counts itself in (``enter``) before it calls the serve and out (``leave``) when it is done;
``serves.loading.in_flight`` reads the count. Neither call waits for Redis: the hot path pays a task
scheduled, not a round trip. A count has a TTL refreshed by every entry, so the leftovers of a web
process that died mid-request fade instead of wedging drains for good (the pool's leases will make this
exact per request).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from django.conf import settings

log = logging.getLogger(__name__)

COUNT_TTL = 300  # seconds a count outlives its last entry


class InFlight:
    def __init__(self) -> None:
        self.client: redis.asyncio.Redis | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def _key(self, serve: str) -> str:
        return f"{settings.ANVIL_REDIS_PREFIX}:inflight:{serve}"

    def _redis(self) -> redis.asyncio.Redis:
        if self.client is None:
            self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                 socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        return self.client

    def _later(self, step: int, serve: str) -> None:
        task = asyncio.get_running_loop().create_task(self._apply(step, serve))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _apply(self, step: int, serve: str) -> None:
        key = self._key(serve)
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.incrby(key, step)
                pipe.expire(key, COUNT_TTL)
                await pipe.execute()
        except Exception:  # a count is an aid to drains, never a reason to fail a request
            log.debug("could not count %s in flight (Redis)", serve, exc_info=True)

    @asynccontextmanager
    async def holding(self, serve: str) -> AsyncIterator[None]:
        self._later(1, serve)
        try:
            yield
        finally:
            self._later(-1, serve)


_counters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InFlight] = weakref.WeakKeyDictionary()


def in_flight() -> InFlight:
    loop = asyncio.get_running_loop()
    found = _counters.get(loop)
    if found is None:
        found = _counters[loop] = InFlight()
    return found
