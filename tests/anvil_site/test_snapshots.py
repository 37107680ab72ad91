"""Snapshots of small tables: one load for many concurrent first requests, background checks after."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync

from anvil_site.snapshots import Snapshot
from inference.keys import create_key
from inference.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_first_requests_share_one_load() -> None:
    create_key("a")
    loads = []

    def load() -> list[str]:
        loads.append(1)
        return list(ApiKey.objects.values_list("name", flat=True))

    snapshot = Snapshot(ApiKey, load, lambda: 1.0, Clock())

    async def many() -> list[list[str]]:
        return await asyncio.gather(*(snapshot.get() for _ in range(20)))

    assert async_to_sync(many)() == [["a"]] * 20
    assert len(loads) == 1


def test_a_due_check_runs_behind_the_request_and_reloads_only_on_change() -> None:
    clock = Clock()
    loads = []

    def load() -> int:
        loads.append(1)
        return ApiKey.objects.count()

    snapshot = Snapshot(ApiKey, load, lambda: 1.0, clock)

    async def get_then_settle() -> int:
        value = await snapshot.get()
        await snapshot.settle()
        return value

    assert async_to_sync(get_then_settle)() == 0
    create_key("b")
    assert async_to_sync(get_then_settle)() == 0  # inside the interval: not even checked
    clock.now += 2
    assert async_to_sync(get_then_settle)() == 0  # answered at once from memory; the check reloads behind it
    assert async_to_sync(get_then_settle)() == 1
    clock.now += 2
    async_to_sync(get_then_settle)()
    assert len(loads) == 2  # the last check found no change: no reload


def test_force_sees_a_change_at_once() -> None:
    snapshot = Snapshot(ApiKey, lambda: ApiKey.objects.count(), lambda: 60.0, Clock())
    assert async_to_sync(snapshot.get)() == 0
    create_key("c")
    assert async_to_sync(snapshot.get)() == 0

    async def forced() -> int:
        return await snapshot.get(force=True)

    assert async_to_sync(forced)() == 1
