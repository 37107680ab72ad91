"""In-memory snapshots of small tables for the hot path, refreshed when the table changes.

A web process must not query the database per request for rows that change a
few times a day (API keys, serves). A ``Snapshot`` holds what ``load`` built,
and at most once per ``interval`` asks the database for a cheap fingerprint of
the table (row count, newest ``updated_at``); only when that changed does it
load again. ``get(force=True)`` checks at once (rate-limited), for a caller
that just missed and suspects the snapshot is behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from channels.db import database_sync_to_async
from django.db import models
from django.db.models import Count, Max

T = TypeVar("T")

# A flood of misses must not become a flood of database queries.
FORCED_CHECK_MIN_INTERVAL = 0.05


def table_fingerprint(model: type[models.Model]) -> tuple[int, object]:
    """Changes whenever a row is added, deleted or saved (rows carry an auto_now ``updated_at``)."""
    agg = model.objects.aggregate(n=Count("pk"), newest=Max("updated_at"))
    return agg["n"], agg["newest"]


class Snapshot(Generic[T]):
    def __init__(self, model: type[models.Model], load: Callable[[], T], interval: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._load = load
        self._interval = interval
        self._clock = clock
        self._value: T | None = None
        self._fingerprint: tuple[int, object] | None = None
        self._checked_at = float("-inf")
        self._forced_at = float("-inf")

    async def get(self, *, force: bool = False) -> T:
        now = self._clock()
        if force:
            if now - self._forced_at >= FORCED_CHECK_MIN_INTERVAL:
                self._forced_at = now
                await self._refresh(now)
        elif now - self._checked_at >= self._interval():
            await self._refresh(now)
        assert self._value is not None
        return self._value

    async def _refresh(self, now: float) -> None:
        self._checked_at = now
        if self._value is not None:
            fingerprint = await database_sync_to_async(table_fingerprint)(self._model)
            if fingerprint == self._fingerprint:
                return
        self._fingerprint, self._value = await database_sync_to_async(self._load_with_fingerprint)()

    def _load_with_fingerprint(self) -> tuple[tuple[int, object], T]:
        # Fingerprint first: a change racing the load is seen by the next check.
        return table_fingerprint(self._model), self._load()

    def invalidate(self) -> None:
        self._value = None
        self._fingerprint = None
        self._checked_at = float("-inf")
        self._forced_at = float("-inf")
