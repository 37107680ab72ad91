"""In-memory snapshots of small tables for the hot path, refreshed when the table changes.

A web process must not query the database per request for rows that change a
few times a day (API keys, serves). A ``Snapshot`` holds what ``load`` built,
and at most once per ``interval`` asks the database for a cheap fingerprint of
the table (row count, newest ``updated_at``); only when that changed does it
load again. That check runs in the background: the request that finds it due
is answered from the snapshot it has, so no request waits on the database
except the very first, and a caller that passes ``force=True`` (a key or a
model it does not know yet) — which checks at once, rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError, models
from django.db.models import Count, Max

T = TypeVar("T")
log = logging.getLogger(__name__)

# A flood of misses must not become a flood of database queries.
FORCED_CHECK_MIN_INTERVAL = 0.05
DATABASE_DOWN = (OperationalError, InterfaceError)  # cannot connect, or the connection broke

# When the snapshots' checks started failing because the database is down (None: it answers). Shared by
# every snapshot, so an outage is two lines in the log, not a traceback per snapshot per interval.
_database_down_since: float | None = None


def table_fingerprint(model: type[models.Model]) -> tuple[int, object]:
    """Changes whenever a row is added, deleted or saved (rows carry an auto_now ``updated_at``)."""
    agg = model.objects.aggregate(n=Count("pk"), newest=Max("updated_at"))
    return agg["n"], agg["newest"]


_ALL: weakref.WeakSet[Snapshot[object]] = weakref.WeakSet()


async def settle_all() -> None:
    """Wait for every snapshot's background check: an event loop about to close calls this."""
    for snapshot in list(_ALL):
        await snapshot.settle()


def invalidate_all() -> None:
    """Forget every snapshot's rows: the next read loads again (a database swapped underneath, as tests do)."""
    for snapshot in list(_ALL):
        snapshot.invalidate()


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
        self._refreshing: asyncio.Task[None] | None = None
        _ALL.add(self)

    async def get(self, *, force: bool = False) -> T:
        now = self._clock()
        if force:
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)  # it may have started before the caller's change
            if now - self._forced_at >= FORCED_CHECK_MIN_INTERVAL:
                self._forced_at = now
                await asyncio.shield(self._start_refresh(now))
        elif self._refreshing is None and (self._value is None or now - self._checked_at >= self._interval()):
            self._start_refresh(now)  # in the background: this request is answered from what we have
        if self._value is None and self._refreshing is not None:
            await asyncio.shield(self._refreshing)  # the first load: nothing to answer with yet
        if self._value is None:
            raise RuntimeError("the snapshot could not be loaded")
        return self._value

    def _start_refresh(self, now: float) -> asyncio.Task[None]:
        self._checked_at = now
        task = asyncio.ensure_future(self._refresh())
        task.add_done_callback(self._refreshed)
        self._refreshing = task
        return task

    async def settle(self) -> None:
        """Wait for a background check under way (tests, and orderly shutdown)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        global _database_down_since
        if self._refreshing is task:
            self._refreshing = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            if _database_down_since is not None:
                log.info("snapshots: the database answers again after %.1f s", time.monotonic() - _database_down_since)
                _database_down_since = None
        elif isinstance(error, DATABASE_DOWN):
            # The rows loaded before keep answering; the next interval tries again.
            if _database_down_since is None:
                _database_down_since = time.monotonic()
                log.warning("snapshots: the database is unreachable (%s: %s); answering from the rows loaded "
                            "before until it returns", type(error).__name__, " ".join(str(error).split())[:300])
        else:
            log.warning("could not refresh the %s snapshot", self._model.__name__, exc_info=error)

    async def _refresh(self) -> None:
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
        self._refreshing = None
