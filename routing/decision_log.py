"""The decision log: one row per request, metadata only, written off the hot path in batches.

A web process turns each record into a JSON line and appends it to a local queue; every
``PUSH_SECONDS`` one pipelined RPUSH hands the queued lines to a Redis list. A Celery task
(``routing.drain_decisions``, every second under beat) pops them in batches and inserts
them with one bulk insert. The database work — model instances, SQL — never runs in the
web process: measured there, a bulk insert of 800 rows held the interpreter for ~60 ms,
which is what a request's p99 would pay.

The local queue is capped: past ``QUEUE_CAP`` (Redis unreachable for a long while) the
oldest records are dropped, counted and logged, so a stuck Redis cannot grow the web
process without bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from routing.models import DecisionRecord

log = logging.getLogger(__name__)

PUSH_SECONDS = 0.2
QUEUE_CAP = 50_000
DRAIN_BATCH = 2000  # rows per bulk insert: large enough to amortise, small enough for a short transaction

# Fields a record may carry: never prompt text, never completion text, never a secret.
FIELDS = frozenset(f.name for f in DecisionRecord._meta.get_fields())


def queue_key() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:decisions"


class DecisionLog:
    def __init__(self) -> None:
        self.queue: deque[str] = deque()
        self.dropped = 0
        self._pusher: asyncio.Task[None] | None = None
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def append(self, record: dict[str, Any]) -> None:
        unknown = set(record) - FIELDS
        if unknown:
            raise ValueError(f"not decision log fields: {sorted(unknown)}")
        record.setdefault("created_at", timezone.now().isoformat())
        if len(self.queue) >= QUEUE_CAP:
            self.queue.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("decision log queue full: %d records dropped so far", self.dropped)
        self.queue.append(json.dumps(record, separators=(",", ":"), default=str))
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.queue:
            await asyncio.sleep(PUSH_SECONDS)
            await self.push()

    def _redis(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            self._loop = loop
        return self._client

    async def push(self) -> int:
        lines = list(self.queue)
        if not lines:
            return 0
        try:
            await self._redis().rpush(queue_key(), *lines)
        except Exception:
            log.warning("could not hand %d decision records to Redis; keeping them", len(lines), exc_info=True)
            return 0
        for _ in lines:
            self.queue.popleft()
        return len(lines)


def drain_decisions(limit: int = DRAIN_BATCH * 10) -> int:
    """Move queued decision records from Redis into the database; returns how many were written."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    written = 0
    try:
        while written < limit:
            lines = client.lpop(queue_key(), DRAIN_BATCH)
            if not lines:
                break
            rows = [_row(line) for line in lines]
            try:
                DecisionRecord.objects.bulk_create([row for row in rows if row is not None], ignore_conflicts=True)
            except Exception:
                client.lpush(queue_key(), *reversed(lines))  # back at the head, for the next drain
                raise
            written += len(lines)
    finally:
        client.close()
    return written


def _row(line: bytes) -> DecisionRecord | None:
    try:
        data = json.loads(line)
        data["created_at"] = parse_datetime(data["created_at"]) or timezone.now()
        return DecisionRecord(**{k: v for k, v in data.items() if k in FIELDS})
    except (ValueError, TypeError, KeyError):
        log.warning("dropping a malformed decision record")
        return None


DECISION_LOG = DecisionLog()
