"""The serves' queues against a real Redis: slots, bounds, fair share between keys, the open flag, dead holders.

Each test drives ``ServeQueues`` (one per event loop, as each web process has one) with a serve of its
own, so the shared Redis keys never meet another test's.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from inference.errors import RateLimited, Unavailable
from inference.serve_queue import QueueSpec, ServeQueues, Wait, Waiter
from serves import model_states
from serves.queue_keys import occupancy, queue_keys


def spec(limit: int = 1, *, gated: bool = False, max_queue: int = 100, timeout: float = 10.0) -> QueueSpec:
    return QueueSpec(f"q-{uuid.uuid4().hex[:8]}", "m", limit, gated, max_queue, timeout)


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), timeout=60))


class Holder:
    """A request holding a slot until told to let go."""

    def __init__(self, queues: ServeQueues, queue: QueueSpec, waiter: Waiter) -> None:
        self.queues, self.queue, self.waiter = queues, queue, waiter
        self.holding, self.release, self.wait = asyncio.Event(), asyncio.Event(), Wait()

    async def __call__(self) -> None:
        async with self.queues.slot(self.queue, self.waiter, self.wait):
            self.holding.set()
            await self.release.wait()


def test_a_full_serve_makes_the_next_request_wait_and_hands_it_the_slot_on_release() -> None:
    async def scenario() -> None:
        queues, queue = ServeQueues(), spec(limit=1)
        first, second = Holder(queues, queue, Waiter("a")), Holder(queues, queue, Waiter("b"))
        tasks = [asyncio.create_task(first())]
        await first.holding.wait()
        tasks.append(asyncio.create_task(second()))
        await asyncio.sleep(0.2)  # long enough for a wrong grant to show
        assert not second.holding.is_set()
        released = time.monotonic()
        first.release.set()
        await asyncio.wait_for(second.holding.wait(), 5)
        handed_over = time.monotonic() - released
        second.release.set()
        await asyncio.gather(*tasks)
        assert not first.wait.queued and second.wait.queued and second.wait.depth == 1
        # Woken by the grant's message, not by its next tick.
        assert handed_over < 0.4, handed_over

    run(scenario)


def test_past_max_queue_a_429_model_queue_full_and_past_the_timeout_a_503_queue_timeout() -> None:
    async def scenario() -> None:
        queues, queue = ServeQueues(), spec(limit=1, max_queue=1, timeout=1.0)
        holder, waiter = Holder(queues, queue, Waiter("a")), Holder(queues, queue, Waiter("a"))
        tasks = [asyncio.create_task(holder())]
        await holder.holding.wait()
        tasks.append(asyncio.create_task(waiter()))
        await asyncio.sleep(0.1)
        with pytest.raises(RateLimited) as full:
            async with queues.slot(queue, Waiter("b"), Wait()):
                pass
        assert full.value.code == "model_queue_full" and (b"retry-after", b"2") in full.value.headers
        with pytest.raises(Unavailable) as late:
            await tasks[1]
        assert late.value.code == "queue_timeout" and any(name == b"retry-after" for name, _ in late.value.headers)
        holder.release.set()
        await tasks[0]

    run(scenario)


def test_a_key_past_its_own_cap_gets_key_queue_full_and_another_key_still_queues() -> None:
    async def scenario() -> None:
        queues, queue = ServeQueues(), spec(limit=1)
        holder = Holder(queues, queue, Waiter("flood"))
        capped = Waiter("flood", max_queued=1)
        first_wait = Holder(queues, queue, capped)
        tasks = [asyncio.create_task(holder())]
        await holder.holding.wait()
        tasks.append(asyncio.create_task(first_wait()))
        await asyncio.sleep(0.1)
        with pytest.raises(RateLimited) as capped_out:
            async with queues.slot(queue, capped, Wait()):
                pass
        assert capped_out.value.code == "key_queue_full"
        other = Holder(queues, queue, Waiter("light"))
        tasks.append(asyncio.create_task(other()))
        await asyncio.sleep(0.1)
        holder.release.set()
        # Fair share: the light key has used nothing, so it goes before the flood's second request.
        await asyncio.wait_for(other.holding.wait(), 5)
        assert not first_wait.holding.is_set()
        other.release.set()
        await asyncio.wait_for(first_wait.holding.wait(), 5)
        first_wait.release.set()
        await asyncio.gather(*tasks)

    run(scenario)


def test_a_light_key_is_served_before_a_flooding_keys_backlog() -> None:
    async def scenario() -> tuple[int, list[str]]:
        queues, queue = ServeQueues(), spec(limit=1)
        order: list[str] = []

        async def request(key: str) -> None:
            async with queues.slot(queue, Waiter(key), Wait()):
                order.append(key)
                await asyncio.sleep(0.02)

        flood = [asyncio.create_task(request("flood")) for _ in range(12)]
        await asyncio.sleep(0.1)  # the flood is queued first
        served_before = len(order)
        light = asyncio.create_task(request("light"))
        await asyncio.gather(*flood, light)
        return served_before, order

    served_before, order = run(scenario)
    assert len(order) == 13 and served_before < 10
    # The next slot or the one after (one may be granted while it joins), not behind the flood's backlog.
    assert order.index("light") <= served_before + 1, (served_before, order)


def test_weights_share_a_busy_serve_in_proportion() -> None:
    async def scenario() -> list[str]:
        queues, queue = ServeQueues(), spec(limit=1)
        order: list[str] = []

        async def request(key: str, weight: float) -> None:
            async with queues.slot(queue, Waiter(key, weight), Wait()):
                order.append(key)
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(request("heavy", 3.0)) for _ in range(15)]
        tasks += [asyncio.create_task(request("light", 1.0)) for _ in range(15)]
        await asyncio.gather(*tasks)
        return order

    order = run(scenario)
    first_twenty = order[:20]
    # Weight 3 against 1: about three of every four slots while both wait.
    assert 12 <= first_twenty.count("heavy") <= 17, order


def test_a_gated_queue_grants_nothing_until_the_serve_is_loaded_and_then_at_once() -> None:
    async def scenario() -> None:
        queues, queue = ServeQueues(), spec(limit=4, gated=True)
        waiter = Holder(queues, queue, Waiter("a"))
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.6)  # past a tick
        assert not waiter.holding.is_set()
        opened = time.monotonic()
        await asyncio.to_thread(model_states.publish, queue.serve, "loaded")
        await asyncio.wait_for(waiter.holding.wait(), 5)
        assert time.monotonic() - opened < 0.4  # woken by the state's message
        waiter.release.set()
        await task
        await asyncio.to_thread(model_states.forget, queue.serve)

    run(scenario)


def test_a_dead_holders_lease_expires_and_frees_its_slot(settings: Any) -> None:
    queue = spec(limit=1, timeout=10)
    client = redis.Redis.from_url(settings.REDIS_URL)
    leases = queue_keys(queue.serve)[0]
    client.zadd(leases, {"a-dead-web-process": time.time() + 1.0})  # its holder never comes back
    try:
        async def scenario() -> float:
            queues = ServeQueues()
            started = time.monotonic()
            async with queues.slot(queue, Waiter("a"), Wait()):
                return time.monotonic() - started

        waited = run(scenario)
        assert 0.5 < waited < 3.0, waited
        assert occupancy(client, [queue.serve])[queue.serve][:2] == (0, 0)
    finally:
        client.close()


def test_a_waiter_that_leaves_gives_its_place_back(settings: Any) -> None:
    queue = spec(limit=1)
    client = redis.Redis.from_url(settings.REDIS_URL)

    async def scenario() -> tuple[int, int]:
        queues = ServeQueues()
        holder, leaver = Holder(queues, queue, Waiter("a")), Holder(queues, queue, Waiter("b"))
        held = asyncio.create_task(holder())
        await holder.holding.wait()
        gone = asyncio.create_task(leaver())
        await asyncio.sleep(0.1)
        waiting_before = (await asyncio.to_thread(occupancy, client, [queue.serve]))[queue.serve][0]
        gone.cancel()  # the client went away
        await asyncio.gather(gone, return_exceptions=True)
        waiting_after = (await asyncio.to_thread(occupancy, client, [queue.serve]))[queue.serve][0]
        holder.release.set()
        await held
        return waiting_before, waiting_after

    try:
        assert run(scenario) == (1, 0)
        assert client.hget(queue_keys(queue.serve)[6], "b") is None  # its key's count of waiting is back to 0
    finally:
        client.close()
