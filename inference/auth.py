"""Front-door authentication against an in-memory cache of hashed API keys.

The hot path never queries the database per request. Each web process keeps
the active (unrevoked) keys in memory, keyed by public prefix, in a
``Snapshot`` that checks once per ``ANVIL_KEY_SYNC_INTERVAL`` whether the key
table changed. A presented key whose prefix is unknown forces that check at
once (rate-limited), so a key minted a moment ago by ``manage.py apikey create``
works on its first request, and a revoked key stops working within one interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from anvil_site.snapshots import Snapshot
from inference.errors import AuthenticationFailed
from inference.keys import hash_secret, prefix_of, record_use
from inference.models import ApiKey

log = logging.getLogger(__name__)

NO_KEY_MESSAGE = (
    "No API key provided. Pass your key in the 'Authorization: Bearer <key>' header "
    "(or 'x-api-key: <key>'). Create one with: python manage.py apikey create NAME"
)
BAD_KEY_MESSAGE = "Incorrect or revoked API key. Check the key, or create one with: python manage.py apikey create NAME"

# last_used_at is for humans: minute resolution, written in batches.
USE_STAMP_INTERVAL = 60.0
# Compared against when the prefix is unknown, so a miss costs what a hit costs.
_DUMMY_HASH = hashlib.sha256(b"anvil-no-such-key").hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: what the rest of the request path may know about the key."""

    key_id: int
    name: str
    prefix: str
    scopes: frozenset[str] = frozenset({"inference"})
    weight: float = 1.0  # share of a busy serve's slot-time (docs/pool.md: fairness)
    max_queued: int | None = None  # its requests waiting at once, across serves
    reach: tuple[str, ...] = ()  # glob patterns of the models, serves and tiers it may use; () is all
    allow_remote: bool = True  # may it reach the metered tiers
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None  # spend allowed per budget_period ("day" or "month", UTC)
    budget_period: str = "month"
    budget_alert: int = 80  # percent of the budget that is logged once per period

    @property
    def limited(self) -> bool:
        """Whether its requests pass the rate limiter (``inference/key_limits.py``); a key without pays nothing."""
        return (self.rpm is not None or self.tpm is not None or self.max_concurrent is not None
                or self.budget_usd is not None)


@dataclass(frozen=True)
class _CachedKey:
    principal: Principal
    secret_hash: str


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer …`` or ``x-api-key: …`` (ASGI header pairs)."""
    bearer = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key":
            token = value.decode("latin-1").strip()
            if token:
                return token
    return bearer


def principal_of(row: ApiKey) -> Principal:
    return Principal(row.pk, row.name, row.prefix, frozenset(row.scopes or ()), weight=row.weight,
                     max_queued=row.max_queued, reach=tuple(p.strip() for p in row.reach or ()),
                     allow_remote=row.allow_remote, rpm=row.rpm, tpm=row.tpm, max_concurrent=row.max_concurrent,
                     budget_usd=float(row.budget_usd) if row.budget_usd is not None else None,
                     budget_period=row.budget_period, budget_alert=row.budget_alert)


def _load_active_keys() -> dict[str, _CachedKey]:
    return {row.prefix: _CachedKey(principal_of(row), row.secret_hash)
            for row in ApiKey.objects.filter(revoked_at__isnull=True)}


class KeyCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys = Snapshot(ApiKey, _load_active_keys, lambda: settings.ANVIL_KEY_SYNC_INTERVAL, clock)
        self._stamped: dict[int, float] = {}
        self._pending_stamps: set[int] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, secret: str | None) -> Principal:
        if not secret:
            raise AuthenticationFailed(NO_KEY_MESSAGE)
        keys = await self._keys.get()
        prefix = prefix_of(secret)
        cached = keys.get(prefix) if prefix else None
        if cached is None and prefix is not None:
            cached = (await self._keys.get(force=True)).get(prefix)
        expected = cached.secret_hash if cached else _DUMMY_HASH
        if not hmac.compare_digest(hash_secret(secret), expected) or cached is None:
            raise AuthenticationFailed(BAD_KEY_MESSAGE)
        self._stamp_use(cached.principal.key_id)
        return cached.principal

    def invalidate(self) -> None:
        """Forget everything; the next request reloads (tests use it between cases)."""
        self._keys.invalidate()

    def _stamp_use(self, key_id: int) -> None:
        now = self._clock()
        if now - self._stamped.get(key_id, float("-inf")) < USE_STAMP_INTERVAL:
            return
        self._stamped[key_id] = now
        self._pending_stamps.add(key_id)
        if len(self._background) == 0:
            task = asyncio.get_running_loop().create_task(self._flush_stamps())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _flush_stamps(self) -> None:
        while self._pending_stamps:
            ids, self._pending_stamps = sorted(self._pending_stamps), set()
            try:
                await database_sync_to_async(record_use)(ids)
            except Exception:  # a failed stamp must never fail a request
                log.warning("could not record API key use for %d key(s)", len(ids), exc_info=True)


KEY_CACHE = KeyCache()
