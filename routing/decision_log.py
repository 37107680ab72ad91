"""The decision log: one row per request, metadata only, written off the hot path in batches.

Requests append to an in-memory queue; a background task flushes it every
``FLUSH_SECONDS`` or when ``BATCH_SIZE`` rows wait, with one bulk insert. The queue is
capped: past ``QUEUE_CAP`` the oldest rows are dropped and the drop is counted and
logged, because a stuck database must not grow the web process without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from channels.db import database_sync_to_async

from routing.models import DecisionRecord

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
BATCH_SIZE = 200  # one INSERT of this many rows is still well under a millisecond per row
QUEUE_CAP = 50_000

# Fields a record may carry: never prompt text, never completion text, never a secret.
FIELDS = frozenset(f.name for f in DecisionRecord._meta.get_fields())


class DecisionLog:
    def __init__(self) -> None:
        self.queue: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def append(self, record: dict[str, Any]) -> None:
        unknown = set(record) - FIELDS
        if unknown:
            raise ValueError(f"not decision log fields: {sorted(unknown)}")
        if len(self.queue) >= QUEUE_CAP:
            self.queue.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("decision log queue full: %d records dropped so far", self.dropped)
        self.queue.append(record)
        self._ensure_flusher()
        if len(self.queue) >= BATCH_SIZE and self._wake is not None:
            self._wake.set()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.queue:
            assert self._wake is not None
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        batch = [self.queue.popleft() for _ in range(min(len(self.queue), BATCH_SIZE * 5))]
        if not batch:
            return 0
        try:
            await database_sync_to_async(_insert)(batch)
        except Exception:
            log.warning("could not write %d decision records", len(batch), exc_info=True)
            return 0
        return len(batch)

    async def drain(self) -> None:
        """Write everything queued now (tests; an orderly shutdown)."""
        while self.queue:
            if not await self.flush():
                break


def _insert(batch: list[dict[str, Any]]) -> None:
    DecisionRecord.objects.bulk_create([DecisionRecord(**row) for row in batch])


DECISION_LOG = DecisionLog()
