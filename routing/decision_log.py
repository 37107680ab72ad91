"""The decision log: one row per request, metadata only, written off the hot path in batches.

A web process sanitises each record (``routing.decision_sanitise``: every value made to
fit its column), turns it into a JSON line and appends it to a local queue; every
``PUSH_SECONDS`` one RPUSH hands the queued lines to a Redis list. A Celery task
(``routing.drain_decisions``, every second under beat) pops them in batches and inserts
them with one bulk insert. The database work — model instances, SQL — never runs in the
web process: measured there, a bulk insert of 800 rows held the interpreter for ~60 ms,
which is what a request's p99 would pay.

While Redis is unreachable the records stay in the local queue and the pusher retries
with a growing delay (up to ``RETRY_MAX_SECONDS``); the outage is logged once when it
starts and once when it ends. The queue is capped: past ``QUEUE_CAP`` the oldest records
are dropped and counted, so a long outage cannot grow the web process without bound.

The drain isolates a row the database refuses: a failed bulk insert is split in halves
until the refused row stands alone, and that row is dropped with a logged reason. Every
dropped record is counted in a Redis hash by reason, which each web process's
``/metrics`` reports as ``anvil_decisions_dropped_total`` (the drain runs in a Celery
worker that Prometheus does not scrape).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from routing.decision_sanitise import sanitise_record
from routing.models import DecisionRecord

log = logging.getLogger(__name__)
ACCESS = logging.getLogger("anvil.access")  # the terminal's line per request: metadata only

PUSH_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0  # the longest wait between pushes while Redis is down: a restart is noticed within it
QUEUE_CAP = 50_000
DRAIN_BATCH = 2000  # rows per bulk insert: large enough to amortise, small enough for a short transaction
METRICS_READ_TIMEOUT = 0.5  # a scrape during a Redis outage answers without the drop counts, not late

# Fields a record may carry: never prompt text, never completion text, never a secret.
FIELDS = frozenset(f.name for f in DecisionRecord._meta.get_fields())

# What a refused row raises: bad data in that row. Anything else (the database is down or
# locked) is not the row's fault, so the batch goes back to Redis instead of being dropped.
ROW_ERRORS = (DataError, IntegrityError, ValidationError, ValueError, TypeError, OverflowError)


def queue_key() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:decisions"


def dropped_key() -> str:
    """A Redis hash: reason -> how many decision records were dropped for it, by every process."""
    return f"{settings.ANVIL_REDIS_PREFIX}:decisions:dropped"


class DecisionLog:
    def __init__(self, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        self.queue: deque[str] = deque()
        self.dropped = 0  # by this process, because the queue was full
        self.failed_pushes = 0  # during the current or the last outage
        self._uncounted_drops = 0  # queue-full drops not yet added to the Redis hash
        self._outage_since: float | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def append(self, record: dict[str, Any]) -> None:
        unknown = set(record) - FIELDS
        if unknown:
            raise ValueError(f"not decision log fields: {sorted(unknown)}")
        clean = sanitise_record(record)
        if ACCESS.isEnabledFor(logging.INFO):
            ACCESS.info("%s %s %s key=%s serve=%s status=%s ttft=%s tokens=%s/%s %.1fms", clean["request_id"],
                        clean.get("endpoint", ""), clean.get("outcome") or "-", clean.get("api_key") or "-",
                        clean.get("served_by") or "-", clean.get("status") or "-",
                        f"{clean['ttft_ms']:.1f}ms" if clean.get("ttft_ms") is not None else "-",
                        clean.get("prompt_tokens") if clean.get("prompt_tokens") is not None else "-",
                        clean.get("completion_tokens") if clean.get("completion_tokens") is not None else "-",
                        clean.get("latency_ms") or 0.0)
        self.queue.append(json.dumps(clean, separators=(",", ":")))
        self._enforce_cap()
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._run())

    def _enforce_cap(self) -> None:
        while len(self.queue) > QUEUE_CAP:
            self.queue.popleft()
            self.dropped += 1
            self._uncounted_drops += 1
            if self.dropped % 1000 == 1:
                log.warning("decision log queue full: %d records dropped so far", self.dropped)

    async def _run(self) -> None:
        delay = PUSH_SECONDS
        while self.queue:
            await asyncio.sleep(delay)
            # Back off while Redis is down: a missing socket fails at once, and retrying every
            # 0.2 s would spin; the records wait in the queue meanwhile.
            delay = PUSH_SECONDS if await self.push() else min(delay * 2, RETRY_MAX_SECONDS)

    def _redis(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = redis.asyncio.from_url(self.redis_url or settings.REDIS_URL,
                                                  socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            self._loop = loop
        return self._client

    async def push(self) -> int:
        """Hand every queued record to Redis in one round trip; returns how many (0 when Redis is down)."""
        if not self.queue:
            return 0
        # Taken out before the await: records appended meanwhile (or dropped by the cap) are
        # then not confused with the ones this push delivers.
        lines = list(self.queue)
        self.queue.clear()
        drops = self._uncounted_drops
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.rpush(queue_key(), *lines)
                if drops:
                    pipe.hincrby(dropped_key(), "queue-full", drops)
                await pipe.execute()
        except Exception as error:  # the pusher must outlive any failure: the records are still here
            self.queue.extendleft(reversed(lines))
            self._enforce_cap()
            self._outage(error)
            return 0
        self._uncounted_drops -= drops
        if self._outage_since is not None:
            log.info("decision log: Redis is reachable again after %.1f s and %d failed pushes; "
                     "delivered %d held records", time.monotonic() - self._outage_since, self.failed_pushes,
                     len(lines))
            self._outage_since = None
        return len(lines)

    def _outage(self, error: Exception) -> None:
        if self._outage_since is None:
            # One line per outage, no traceback: the cause is always the same and the pusher retries.
            log.warning("decision log: cannot hand records to Redis (%s: %s); holding %d in memory and retrying",
                        type(error).__name__, error, len(self.queue))
            self._outage_since = time.monotonic()
            self.failed_pushes = 0
        self.failed_pushes += 1

    async def dropped_totals(self) -> dict[str, int]:
        """Records dropped so far, by reason, by every process (empty when Redis does not answer in time)."""
        try:
            raw = await asyncio.wait_for(self._redis().hgetall(dropped_key()), METRICS_READ_TIMEOUT)
        except Exception:  # a scrape is no place to report a Redis outage: the pusher does that
            return {}
        return {key.decode() if isinstance(key, bytes) else key: int(value) for key, value in raw.items()}


def drain_decisions(limit: int = DRAIN_BATCH * 10, redis_url: str | None = None) -> int:
    """Move queued decision records from Redis into the database; returns how many were written."""
    client = redis.Redis.from_url(redis_url or settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    written = taken = 0
    try:
        while taken < limit:
            lines: list[bytes] | None = client.lpop(queue_key(), DRAIN_BATCH)  # type: ignore[assignment]
            if not lines:
                break
            taken += len(lines)
            dropped: Counter[str] = Counter()
            rows = []
            for line in lines:
                row = _row(line)
                if row is None:
                    dropped["malformed"] += 1
                else:
                    rows.append((line, row))
            try:
                written += _insert_isolating(rows, dropped)
            except _Unwritten as stop:
                client.lpush(queue_key(), *reversed(stop.lines))  # back at the head, for the next drain
                raise stop.error from None
            finally:
                if dropped:
                    _count_dropped(client, dropped)
    finally:
        client.close()
    return written


class _Unwritten(Exception):
    """The database failed (not a row): ``lines`` were not written."""

    def __init__(self, lines: list[bytes], error: Exception) -> None:
        self.lines = lines
        self.error = error


def _insert_isolating(rows: list[tuple[bytes, DecisionRecord]], dropped: Counter[str]) -> int:
    """Insert ``rows``, splitting a refused batch until each refused row stands alone and is dropped.

    Ranges are tried in order, so when the database itself fails, everything from the range
    that failed onwards is unwritten and goes back to Redis.
    """
    written = 0
    pending = [(0, len(rows))]
    while pending:
        start, end = pending.pop()
        if start == end:
            continue
        batch = [row for _, row in rows[start:end]]
        try:
            # A savepoint per try: on PostgreSQL a failed statement aborts the transaction,
            # and the next try must not inherit that.
            with transaction.atomic():
                DecisionRecord.objects.bulk_create(batch, ignore_conflicts=True)
        except ROW_ERRORS as error:
            if end - start == 1:
                _drop(batch[0], error)
                dropped["rejected"] += 1
                continue
            middle = (start + end) // 2
            pending += [(middle, end), (start, middle)]  # the left half first
            continue
        except Exception as error:
            raise _Unwritten([line for line, _ in rows[start:]], error) from error
        written += end - start
    return written


def _drop(row: DecisionRecord, error: Exception) -> None:
    reason = " ".join(str(error).split())[:300]
    log.warning("dropping decision record %s (request %s): the database refused it: %s: %s",
                row.pk, row.request_id, type(error).__name__, reason)


def _count_dropped(client: redis.Redis, dropped: Counter[str]) -> None:
    try:
        with client.pipeline(transaction=True) as pipe:
            for reason, count in dropped.items():
                pipe.hincrby(dropped_key(), reason, count)
            pipe.execute()
    except redis.RedisError:
        log.warning("could not count %d dropped decision records in Redis", sum(dropped.values()))


def _row(line: bytes) -> DecisionRecord | None:
    try:
        data = json.loads(line)
        data["created_at"] = parse_datetime(data["created_at"]) or timezone.now()
        return DecisionRecord(**{k: v for k, v in data.items() if k in FIELDS})
    except (ValueError, TypeError, KeyError):
        log.warning("dropping a malformed decision record")
        return None


DECISION_LOG = DecisionLog()
