"""Model states mirrored in Redis, so every web process sees a load or an unload within a second.

The database holds each serve's ``model_state`` (and every transition as a ``ServeEvent``); the
serve catalog's table check would see a change too, but only at its own pace and at the cost of a
database query per check. Here, whoever changes a state (a load, an unload, the process watch)
writes it to a Redis hash and bumps a version key; each web process reads the version (one GET)
at most every ``CHECK_SECONDS``, in the background, and the hash only when the version moved.
Without Redis, the catalog's own state (from the database) stands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio
from django.conf import settings

from serves.queue_keys import granted_channel, open_key

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.5
CATCH_UP_SECONDS = 0.05


@dataclass(frozen=True)
class MirroredState:
    state: str
    error_code: str = ""
    detail: str = ""
    at: float = 0.0  # when it changed (epoch seconds): the newer of this and the database's wins


def _keys() -> tuple[str, str]:
    prefix = settings.ANVIL_REDIS_PREFIX
    return f"{prefix}:model-states", f"{prefix}:model-states:version"


def changed_channel() -> str:
    """Where a serve's name is published whenever its state changes."""
    return f"{settings.ANVIL_REDIS_PREFIX}:model-states:changed"


def publish(serve: str, state: str, error_code: str = "", detail: str = "", at: float | None = None) -> None:
    """Record a serve's new state for every web process (from a task or a command; synchronous)."""
    states, version = _keys()
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        with client.pipeline() as pipe:
            pipe.hset(states, serve, json.dumps({"state": state, "error_code": error_code, "detail": detail[:300],
                                                 "at": time.time() if at is None else at}))
            pipe.incr(version)
            pipe.publish(changed_channel(), serve)  # the console's models board shows it at once
            if state == "loaded":
                pipe.set(open_key(serve), "1")
                pipe.publish(granted_channel(), f"{serve} *")  # its waiters look now, not at their next tick
            else:
                pipe.delete(open_key(serve))
            pipe.execute()
    except redis.RedisError as exc:
        # The database has the state; the web processes' catalogs catch up from it. One line: an outage
        # is said by every component once, not as a traceback per transition.
        log.warning("could not mirror %s's state %s to Redis (%s: %s)", serve, state, type(exc).__name__,
                    " ".join(str(exc).split())[:200])
    finally:
        client.close()


def forget(serve: str) -> None:
    """A deleted or renamed serve: drop its mirrored state."""
    states, version = _keys()
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        client.hdel(states, serve)
        client.incr(version)
        client.delete(open_key(serve))
    except redis.RedisError:
        log.warning("could not forget %s's mirrored state", serve, exc_info=True)
    finally:
        client.close()


def reassert_open(loaded: list[str]) -> None:
    """Set the queues' open flags of the serves the database says are loaded (the watch, every few seconds):
    a Redis that restarted must not leave a loaded serve's queue shut. Never clears one: every other
    state's transition does that as it happens, and a clear here could race a load that just ended."""
    if not loaded:
        return
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                  socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    try:
        with client.pipeline(transaction=False) as pipe:
            for serve in loaded:
                pipe.set(open_key(serve), "1")
            pipe.execute()
    except redis.RedisError:
        log.debug("could not rewrite the queues' open flags", exc_info=True)
    finally:
        client.close()


class StateMirror:
    """A web process's copy of the mirrored states, refreshed in the background (never on a request's time)."""

    def __init__(self) -> None:
        self.states: dict[str, MirroredState] = {}
        self.version: bytes | None = None
        self.checked_at = float("-inf")
        self.task: asyncio.Task[None] | None = None
        self.client: redis.asyncio.Redis | None = None
        self.moved = False  # the states changed since catch_up last asked

    def current(self) -> dict[str, MirroredState]:
        now = time.monotonic()
        if now - self.checked_at >= CHECK_SECONDS and (self.task is None or self.task.done()):
            self.checked_at = now
            self.task = asyncio.ensure_future(self.refresh())
        return self.states

    async def catch_up(self) -> bool:
        """Read Redis now (at most every ``CATCH_UP_SECONDS``); True when a state changed.

        For a request about to be refused because its model is not loaded: the load may have ended
        since the last background check, and a Redis GET is cheaper than a client's retry."""
        if self.task is not None and not self.task.done():
            await asyncio.shield(self.task)  # a check under way: share it
        elif time.monotonic() - self.checked_at >= CATCH_UP_SECONDS:
            self.checked_at = time.monotonic()
            self.task = asyncio.ensure_future(self.refresh())
            await asyncio.shield(self.task)
        before, self.moved = self.moved, False
        return before

    async def refresh(self) -> None:
        states, version = _keys()
        try:
            if self.client is None:
                self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                     socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            seen = await self.client.get(version)
            if seen == self.version and self.version is not None:
                return
            raw = await self.client.hgetall(states)
        except Exception:
            log.debug("model states unavailable from Redis; the catalog's stand", exc_info=True)
            return
        self.states = {name.decode(): MirroredState(**json.loads(value)) for name, value in raw.items()}
        self.version, self.moved = seen, True


_mirrors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StateMirror] = weakref.WeakKeyDictionary()


def mirror() -> StateMirror:
    loop = asyncio.get_running_loop()
    found = _mirrors.get(loop)
    if found is None:
        found = _mirrors[loop] = StateMirror()
    return found
