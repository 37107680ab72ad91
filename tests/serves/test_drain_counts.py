"""Requests in flight as an unload reads them: counted in each web process's memory, written to Redis
within a flush interval, summed across processes, and a dead process's leftovers ignored."""

from __future__ import annotations

import asyncio
import time

import redis
from django.conf import settings

from inference.inflight import InFlight
from serves.drain_counts import FLUSH_SECONDS, STALE_SECONDS, in_flight, inflight_key


def test_counts_reach_redis_within_a_flush_and_leave_nothing_once_done() -> None:
    serve = f"drain-{time.monotonic_ns()}"
    seen: list[int] = []

    async def requests() -> None:
        counter = InFlight()
        async with counter.holding(serve), counter.holding(serve):
            await asyncio.sleep(FLUSH_SECONDS * 4)
            seen.append(await asyncio.to_thread(in_flight, serve))
        await asyncio.sleep(FLUSH_SECONDS * 4)
        seen.append(await asyncio.to_thread(in_flight, serve))
        assert counter.flusher is not None
        await asyncio.wait_for(counter.flusher, 5)  # it stops once every count is zero and written

    asyncio.run(requests())
    assert seen == [2, 0]
    assert not redis.Redis.from_url(settings.REDIS_URL).exists(inflight_key(serve))


def test_a_dead_processs_count_is_ignored_once_stale_and_live_ones_add_up() -> None:
    serve = f"drain-{time.monotonic_ns()}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    now = time.time()
    client.hset(inflight_key(serve), mapping={"dead:1:a": f"5 {now - STALE_SECONDS - 1:.3f}",
                                              "web:2:b": f"2 {now:.3f}", "web:3:c": f"1 {now:.3f}",
                                              "garbled": "x"})
    try:
        assert in_flight(serve) == 3
    finally:
        client.delete(inflight_key(serve))
