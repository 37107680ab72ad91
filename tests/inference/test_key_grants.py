"""Grants against a real Redis: two limiters (two web processes' worth) share one key's limits.

* together they never admit past a limit, and a high limit is mostly admitted without a round trip;
* a small limit has no chunk: every request syncs, and a slot given back is free to the other process;
* a grant left idle goes back to Redis within a second or two (the sweeper), so the other process can use it;
* Redis away: requests go on unlimited (None).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from inference.auth import Principal
from inference.errors import RateLimited
from inference.key_limits import KeyLimiter, Ticket

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def key(**limits: Any) -> Principal:
    return Principal(int(uuid.uuid4().int % 10**9), f"k-{uuid.uuid4().hex[:6]}", "anv_test", **limits)


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), timeout=60))


async def admitted(limiter: KeyLimiter, principal: Principal) -> Ticket | None:
    try:
        ticket = await limiter.admit(principal, BODY, {})
    except RateLimited:
        return None
    assert ticket is not None
    return ticket


def test_two_processes_never_admit_past_the_limit_and_a_high_limit_mostly_skips_redis() -> None:
    async def scenario() -> None:
        one, two = KeyLimiter(), KeyLimiter()
        principal = key(rpm=200)  # chunks of 10
        for n in range(180):
            assert await admitted(one if n % 2 else two, principal) is not None
        assert one.grants.syncs + two.grants.syncs <= 20  # one round trip per 11 requests, not per request
        taken = 180
        for n in range(120):
            taken += await admitted(one if n % 2 else two, principal) is not None
        assert 200 <= taken <= 203  # the bucket refills 3.3 a second while this runs

    run(scenario)


def test_a_small_limit_is_exact_and_a_freed_slot_is_the_other_processes_at_once() -> None:
    async def scenario() -> None:
        one, two = KeyLimiter(), KeyLimiter()
        principal = key(max_concurrent=2)  # no chunk: every request syncs
        first, second = await admitted(one, principal), await admitted(two, principal)
        assert first is not None and second is not None
        assert await admitted(two, principal) is None and await admitted(one, principal) is None
        first.settle(11, 8, served=True)
        one.release(first)

        async def free() -> bool:
            ticket = await admitted(two, principal)
            if ticket is not None:
                two.release(ticket)
            return ticket is not None

        for _ in range(50):  # the slot goes back in the background, within milliseconds
            if await free():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the freed slot never reached the other process")

    run(scenario)


def test_an_idle_grant_goes_back_so_another_process_can_use_it() -> None:
    async def scenario() -> None:
        one, two = KeyLimiter(), KeyLimiter()
        principal = key(rpm=60)  # chunks of 3: each sync takes 4, and the 15th leaves the bucket empty
        assert await admitted(one, principal) is not None
        grant = next(iter(one.grants.grants.values()))
        while not (grant.view is not None and grant.view.requests < 1 and grant.requests >= 1):
            assert await admitted(one, principal) is not None  # until the bucket is empty and one holds the rest
        assert await admitted(two, principal) is None
        # The sweeper gives one's idle grant back within a couple of seconds.
        for _ in range(60):
            await asyncio.sleep(0.1)
            if await admitted(two, principal) is not None:
                break
        else:
            pytest.fail("the idle grant never went back")

    run(scenario)


def test_without_redis_requests_go_on_unlimited(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    async def scenario() -> None:
        limiter = KeyLimiter()
        assert await limiter.admit(key(rpm=1), BODY, {}) is None

    run(scenario)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping()


