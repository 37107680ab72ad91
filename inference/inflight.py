"""Requests in flight per serve, counted in Redis across every web process, so an unload can drain.

An attempt counts itself in and out (``holding``) in this process's memory: the hot path pays a dict
update, never a Redis call. A flusher writes what changed at most every ``FLUSH_SECONDS`` (one pipeline
for every serve that moved), as this process's field of the serve's hash ``…:inflight:<serve>``:
``"<count> <written at>"``. While a count is not zero the flusher rewrites it every ``HEARTBEAT_SECONDS``,
so ``serves.drain_counts.in_flight``, which sums the fields, can ignore one older than ``STALE_SECONDS``:
the leftovers of a web process that died mid-request fade instead of wedging drains for good.

A count reaches Redis up to ``FLUSH_SECONDS`` after the request started; an unload lets that much pass
(``serves.loading.DRAIN_SETTLE_SECONDS``, with the web processes' view of the new state) before it trusts a zero.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio
from django.conf import settings

from serves.drain_counts import FLUSH_SECONDS, HEARTBEAT_SECONDS, STALE_SECONDS, inflight_key, live_total
from serves.queue_keys import queue_keys

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
LOADS_REFRESH_SECONDS = 0.1  # how stale the other processes' counts may be when balancing replicas


class InFlight:
    def __init__(self) -> None:
        self.client: redis.asyncio.Redis | None = None
        self.counts: Counter[str] = Counter()
        self.dirty: set[str] = set()
        self.flusher: asyncio.Task[None] | None = None
        # One field per process and event loop: a restarted process never inherits a dead one's count.
        self.field = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # The other web processes' counts of the serves that have replicas, read in the background.
        self.others: dict[str, int] = {}
        self.others_read_at = float("-inf")
        self.others_task: asyncio.Task[None] | None = None

    def _redis(self) -> redis.asyncio.Redis:
        if self.client is None:
            self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                 socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        return self.client

    def _changed(self, serve: str) -> None:
        self.dirty.add(serve)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Write what changed every FLUSH_SECONDS, and the live counts every HEARTBEAT_SECONDS, until all is zero."""
        beat = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            if time.monotonic() - beat >= HEARTBEAT_SECONDS:
                beat = time.monotonic()
                self.dirty.update(serve for serve, count in self.counts.items() if count)
            if self.dirty and not await self._flush():
                await asyncio.sleep(RETRY_SECONDS)  # Redis away: the counts stay dirty until it answers
            if not self.dirty and not any(self.counts.values()):
                return

    async def _flush(self) -> bool:
        dirty, self.dirty = self.dirty, set()
        now = time.time()
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                for serve in dirty:
                    key, count = inflight_key(serve), self.counts.get(serve, 0)
                    if count:
                        pipe.hset(key, self.field, f"{count} {now:.3f}")
                        pipe.expire(key, int(STALE_SECONDS * 2))
                    else:
                        pipe.hdel(key, self.field)
                await pipe.execute()
        except Exception:  # a count is an aid to drains, never a reason to fail a request
            self.dirty |= dirty
            log.debug("could not write the requests in flight (Redis)", exc_info=True)
            return False
        for serve in dirty:
            if not self.counts.get(serve):
                self.counts.pop(serve, None)
        return True

    def loads(self, serves: tuple[str, ...]) -> dict[str, int]:
        """Requests in flight at each of ``serves`` across the web processes, and those waiting in its queue:
        this process's in-flight count now, the rest as read at most ``LOADS_REFRESH_SECONDS`` ago (in the
        background, never on the request's time). For balancing a model's replicas by load."""
        if not serves:
            return {}
        now = time.monotonic()
        if now - self.others_read_at >= LOADS_REFRESH_SECONDS and (self.others_task is None or self.others_task.done()):
            self.others_read_at = now
            self.others_task = asyncio.get_running_loop().create_task(self._read_others(serves))
        return {serve: self.counts.get(serve, 0) + self.others.get(serve, 0) for serve in serves}

    async def _read_others(self, serves: tuple[str, ...]) -> None:
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                for serve in serves:
                    pipe.hgetall(inflight_key(serve))
                    pipe.zcard(queue_keys(serve)[2])
                rows = await pipe.execute()
        except Exception:
            log.debug("could not read the other processes' requests in flight", exc_info=True)
            return
        now, mine = time.time(), self.field.encode()
        # A request waiting in a replica's queue (every process's) will be in flight there: it counts.
        self.others = {serve: live_total({f: v for f, v in fields.items() if f != mine}, now) + int(waiting)
                       for serve, fields, waiting in zip(serves, rows[::2], rows[1::2], strict=True)}

    @asynccontextmanager
    async def holding(self, serve: str) -> AsyncIterator[None]:
        self.counts[serve] += 1
        self._changed(serve)
        try:
            yield
        finally:
            self.counts[serve] -= 1
            self._changed(serve)


_counters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InFlight] = weakref.WeakKeyDictionary()


def in_flight() -> InFlight:
    loop = asyncio.get_running_loop()
    found = _counters.get(loop)
    if found is None:
        found = _counters[loop] = InFlight()
    return found
