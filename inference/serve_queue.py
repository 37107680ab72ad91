"""Per-serve queues shared by every web process: ``target_inflight`` slots, bounded waits, fair share across keys.

A serve with ``target_inflight`` (or loaded on demand) is reached through its queue. A request takes
a *lease* (a slot) or waits for one; the state lives in Redis so every web process sees one queue:

* ``…:q:<serve>:leases``  zset lease -> expiry. A holder refreshes its lease while it streams; a web
  process that dies leaves leases that expire (``LEASE_SECONDS``), so it cannot wedge the serve.
* ``…:q:<serve>:waiting`` zset ticket -> arrival; ``…:tickets`` ticket -> "key weight expiry". A waiter
  refreshes its ticket every tick; an abandoned one expires (``TICKET_SECONDS``).
* ``…:q:<serve>:usage``   per key: slot-seconds used / weight (start-time fair queueing). A free slot
  goes to the waiting ticket whose key has used least; a key that starts waiting is lifted to the
  usage of the last one served, so an idle key does not bank credit and a flood cannot starve an
  occasional request. A grant charges the serve's mean hold time at once, corrected at release.
* ``…:q:<serve>:open``    exists while the serve is loaded (``serves.model_states`` writes it):
  nothing is granted to a serve that is loading, draining or gone.

Grants happen inside Redis (Lua), at enqueue, at release and at each waiter's tick, and are published
on ``…:q:granted``; each web process holds one subscription and wakes its waiter. The tick
(``TICK_SECONDS``) is the safety net for a missed message. A serve with no limit and loaded
on demand queues only while it is not loaded: once open, a grant is one Redis call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio
from django.conf import settings

from inference.errors import RateLimited, Unavailable
from serves.queue_keys import granted_channel as channel
from serves.queue_keys import queue_keys

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0  # a lease not refreshed for this long is a dead holder's
LEASE_REFRESH_SECONDS = 10.0
TICKET_SECONDS = 10.0  # a ticket not refreshed for this long is a dead waiter's
TICK_SECONDS = 0.5
UNLIMITED = 1_000_000_000
QUEUE_FULL_RETRY_AFTER = 2

_PURGE_AND_PUMP = """
local leases, lkeys, waiting, tickets = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local usage, open, keyqueued, last = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local gated = ARGV[3] == '1'
local lease_ttl = tonumber(ARGV[4])
local channel = ARGV[5]
local serve = ARGV[6]

local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^ ]+') do out[#out + 1] = part end
  return out
end

local function purge()
  local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, id in ipairs(dead) do redis.call('HDEL', lkeys, id) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end
end

local function drop_ticket(id, key)
  redis.call('ZREM', waiting, id)
  redis.call('HDEL', tickets, id)
  if key then
    if redis.call('HINCRBY', keyqueued, key, -1) <= 0 then redis.call('HDEL', keyqueued, key) end
  end
end

local function grant(id, key, weight, announce)
  local est = tonumber(redis.call('HGET', usage, '_hold') or '1') or 1
  drop_ticket(id, key)
  redis.call('ZADD', leases, now + lease_ttl, id)
  redis.call('SET', last, now)
  redis.call('HSET', lkeys, id, key .. ' ' .. weight .. ' ' .. now .. ' ' .. est)
  local used = tonumber(redis.call('HGET', usage, key) or '0') or 0
  redis.call('HSET', usage, '_floor', used)
  redis.call('HINCRBYFLOAT', usage, key, est / weight)
  if announce then redis.call('PUBLISH', channel, serve .. ' ' .. id) end
end

local function pump()
  if gated and redis.call('EXISTS', open) == 0 then return end
  local free = limit - redis.call('ZCARD', leases)
  while free > 0 do
    local ids = redis.call('ZRANGE', waiting, 0, -1)
    if #ids == 0 then return end
    local best, best_key, best_weight, best_used = nil, nil, nil, nil
    local used_of = {}
    for _, id in ipairs(ids) do
      local info = redis.call('HGET', tickets, id)
      if not info then
        redis.call('ZREM', waiting, id)
      else
        local f = split(info)
        if tonumber(f[3]) < now then
          drop_ticket(id, f[1])
        else
          local used = used_of[f[1]]
          if used == nil then
            used = tonumber(redis.call('HGET', usage, f[1]) or '0') or 0
            used_of[f[1]] = used
          end
          if best == nil or used < best_used then
            best, best_key, best_weight, best_used = id, f[1], tonumber(f[2]), used
          end
        end
      end
    end
    if best == nil then return end
    grant(best, best_key, best_weight, true)
    free = free - 1
  end
end
"""

_ACQUIRE = _PURGE_AND_PUMP + """
local ticket, key, weight = ARGV[7], ARGV[8], tonumber(ARGV[9])
local max_queue, key_cap = tonumber(ARGV[10]), tonumber(ARGV[11])
purge()
local is_open = (not gated) or redis.call('EXISTS', open) == 1
if is_open and redis.call('ZCARD', waiting) == 0 and redis.call('ZCARD', leases) < limit then
  grant(ticket, key, weight, false)
  return {1, 0}
end
local depth = redis.call('ZCARD', waiting)
if depth >= max_queue then return {-1, depth} end
local queued = tonumber(redis.call('HGET', keyqueued, key) or '0') or 0
if key_cap > 0 and queued >= key_cap then return {-2, queued} end
redis.call('ZADD', waiting, now, ticket)
redis.call('HSET', tickets, ticket, key .. ' ' .. weight .. ' ' .. (now + tonumber(ARGV[12])))
redis.call('HINCRBY', keyqueued, key, 1)
local floor = tonumber(redis.call('HGET', usage, '_floor') or '0') or 0
if (tonumber(redis.call('HGET', usage, key) or '0') or 0) < floor then redis.call('HSET', usage, key, floor) end
pump()
if redis.call('ZSCORE', leases, ticket) then return {1, 0} end
return {0, redis.call('ZCARD', waiting)}
"""

# A waiter's tick: refresh its ticket, purge, pump; 1 when it holds a lease now.
_TICK = _PURGE_AND_PUMP + """
local ticket, ticket_ttl = ARGV[7], tonumber(ARGV[8])
purge()
local info = redis.call('HGET', tickets, ticket)
if info then
  local f = split(info)
  redis.call('HSET', tickets, ticket, f[1] .. ' ' .. f[2] .. ' ' .. (now + ticket_ttl))
end
pump()
if redis.call('ZSCORE', leases, ticket) then return 1 end
if info then return 0 end
return -1
"""

# Leave: a waiter that gives up, or a holder that is done (usage charged the time it held the slot).
_LEAVE = _PURGE_AND_PUMP + """
local ticket = ARGV[7]
local info = redis.call('HGET', tickets, ticket)
if info then drop_ticket(ticket, split(info)[1]) end
local held = redis.call('HGET', lkeys, ticket)
if held then
  local f = split(held)
  local seconds = math.max(now - tonumber(f[3]), 0)
  redis.call('HINCRBYFLOAT', usage, f[1], (seconds - tonumber(f[4])) / tonumber(f[2]))
  local hold = tonumber(redis.call('HGET', usage, '_hold') or '1') or 1
  redis.call('HSET', usage, '_hold', hold * 0.8 + seconds * 0.2)
  redis.call('ZREM', leases, ticket)
  redis.call('HDEL', lkeys, ticket)
  redis.call('SET', last, now)
end
purge()
pump()
return held and 1 or 0
"""

@dataclass(frozen=True)
class QueueSpec:
    """What a serve's queue needs of the serve (``ServeView``'s fields)."""

    serve: str
    model: str
    limit: int  # target_inflight, or UNLIMITED
    gated: bool  # grants wait for the serve to be loaded (a serve Anvil runs)
    max_queue: int
    timeout: float
    fail_open: bool = False  # Redis away: let the request through (the serve is loaded) rather than refuse it


@dataclass(frozen=True)
class Waiter:
    """Who waits: the key (its fair share and its own cap)."""

    key: str
    weight: float = 1.0
    max_queued: int | None = None


@dataclass
class Wait:
    """How a request went through a queue, for its decision record."""

    queued: bool = False
    seconds: float = 0.0
    depth: int = 0  # waiting ahead of it (itself included) when it joined


def model_queue_full(spec: QueueSpec, depth: int) -> RateLimited:
    return RateLimited(f"The model {spec.model!r} has {depth} requests waiting, its limit (max_queue); retry shortly.",
                       code="model_queue_full", headers=[(b"retry-after", str(QUEUE_FULL_RETRY_AFTER).encode())])


class ServeQueues:
    """This event loop's side of the shared queues: the Redis scripts, and one subscription for grants."""

    def __init__(self) -> None:
        self.client: redis.asyncio.Redis | None = None
        self.scripts: dict[str, object] = {}
        self.granted: dict[str, asyncio.Future[None]] = {}  # ticket -> woken when it may have a slot
        self.serve_of: dict[str, str] = {}  # ticket -> serve, for a wake-all when a serve opens
        self.listener: asyncio.Task[None] | None = None
        self.subscribed: asyncio.Event | None = None
        self.releasing: set[asyncio.Task[None]] = set()  # slots being given back (kept: a task needs a holder)
        self.held: dict[str, str] = {}  # ticket -> serve of every slot this loop holds (their leases refreshed)
        self.keeper: asyncio.Task[None] | None = None
        self.down_since: float | None = None  # when Redis stopped answering the queue's scripts

    def _redis(self) -> redis.asyncio.Redis:
        if self.client is None:
            self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                 socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            for name, source in (("acquire", _ACQUIRE), ("tick", _TICK), ("leave", _LEAVE)):
                self.scripts[name] = self.client.register_script(source)
        return self.client

    async def _run(self, script: str, spec: QueueSpec, *extra: object) -> object:
        self._redis()
        args = [f"{time.time():.6f}", spec.limit, "1" if spec.gated else "0", LEASE_SECONDS, channel(), spec.serve,
                *extra]
        result = await self.scripts[script](keys=queue_keys(spec.serve), args=args)  # type: ignore[operator]
        if self.down_since is not None:
            log.info("serve queues: Redis answers again after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None
        return result

    async def _listen(self) -> None:
        assert self.subscribed is not None
        while True:
            try:
                pubsub = self._redis().pubsub()
                await pubsub.subscribe(channel())
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        serve, _, ticket = message["data"].decode().partition(" ")
                        self._wake(serve, ticket)
            except asyncio.CancelledError:
                raise
            except Exception:  # the ticks carry the waiters until the subscription is back
                log.debug("queue grant subscription lost; resubscribing", exc_info=True)
                await asyncio.sleep(1.0)

    def _wake(self, serve: str, ticket: str) -> None:
        """A grant to ``ticket``, or (``*``) the serve opened: its waiters look at once rather than at their tick."""
        woken = [ticket] if ticket != "*" else [t for t, s in self.serve_of.items() if s == serve]
        for one in woken:
            future = self.granted.get(one)
            if future is not None and not future.done():
                future.set_result(None)

    async def _ensure_listening(self) -> None:
        if self.subscribed is not None and self.subscribed.is_set() and self.listener is not None \
                and not self.listener.done():
            return  # the hot path: subscribed already
        if self.listener is None or self.listener.done():
            self.subscribed = asyncio.Event()
            self.listener = asyncio.get_running_loop().create_task(self._listen())
        assert self.subscribed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), timeout=TICK_SECONDS)

    @contextlib.asynccontextmanager
    async def slot(self, spec: QueueSpec, waiter: Waiter, wait: Wait,
                   on_tick: Callable[[float], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        """Hold one of ``spec``'s slots for the block; wait for it first when none is free.

        Raises RateLimited (``model_queue_full``, ``key_queue_full``) when the queue will not take the
        request, Unavailable (``queue_timeout``) when no slot came within ``spec.timeout``. ``on_tick``
        runs every tick while waiting (the seconds waited so far): an on-demand load is started and
        watched from there, and may raise to end the wait.
        """
        ticket = uuid.uuid4().hex
        started = time.monotonic()
        self.granted[ticket] = asyncio.get_running_loop().create_future()
        self.serve_of[ticket] = spec.serve
        try:
            await self._ensure_listening()
            try:
                result = await self._run("acquire", spec, ticket, waiter.key, waiter.weight, spec.max_queue,
                                         waiter.max_queued or 0, TICKET_SECONDS)
            except (redis.RedisError, OSError) as exc:
                result = self._queue_down(spec, exc)
            code, depth = int(result[0]), int(result[1])  # type: ignore[index]
            if code == -1:
                raise model_queue_full(spec, depth)
            if code == -2:
                raise RateLimited(f"This API key has {depth} requests waiting, its limit (max_queued); retry when "
                                  "one is answered.", code="key_queue_full",
                                  headers=[(b"retry-after", str(QUEUE_FULL_RETRY_AFTER).encode())])
            if code == 0:
                wait.queued, wait.depth = True, depth
                await self._wait(spec, ticket, started, on_tick)
        except BaseException:
            self._forget(ticket)
            await self._leave(spec, ticket)
            raise
        self._forget(ticket)
        wait.seconds = time.monotonic() - started
        self.held[ticket] = spec.serve
        if self.keeper is None or self.keeper.done():
            self.keeper = asyncio.get_running_loop().create_task(self._keep())
        try:
            yield
        finally:
            self.held.pop(ticket, None)
            # Released in the background: the answer is complete, and a client that leaves now (it has all it
            # asked for) must not turn a served request into a cancelled one while Redis answers.
            self._release_soon(spec, ticket)

    def _queue_down(self, spec: QueueSpec, exc: BaseException) -> tuple[int, int]:
        """Redis does not answer: a loaded serve is reached without a slot (its limit and fair share are off
        until Redis is back: traffic goes on, as the breakers do); one that is not loaded cannot be waited for."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("serve queues: Redis does not answer (%s: %s); loaded serves are reached without their "
                        "queues until it does", type(exc).__name__, exc)
        if spec.fail_open:
            return (1, 0)
        raise Unavailable(f"The model {spec.model!r} cannot be waited for: the queue (Redis) does not answer; "
                          "retry shortly.", code="queue_unavailable", headers=[(b"retry-after", b"2")])

    def _forget(self, ticket: str) -> None:
        self.granted.pop(ticket, None)
        self.serve_of.pop(ticket, None)

    async def _wait(self, spec: QueueSpec, ticket: str, started: float,
                    on_tick: Callable[[float], Awaitable[None]] | None) -> None:
        while True:
            remaining = spec.timeout - (time.monotonic() - started)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.granted[ticket]), timeout=min(TICK_SECONDS, remaining))
            if self.granted[ticket].done():  # woken: wait for the next word after this look
                self.granted[ticket] = asyncio.get_running_loop().create_future()
            try:
                state = int(await self._run("tick", spec, ticket, TICKET_SECONDS))  # type: ignore[arg-type]
            except (redis.RedisError, OSError):
                state = 0  # Redis away for a moment: wait on (the deadline still holds)
            if state == 1:
                return
            if state == -1:  # the ticket expired (this process stalled past TICKET_SECONDS)
                raise Unavailable(f"The request lost its place in {spec.model!r}'s queue; retry.",
                                  code="queue_timeout", headers=[(b"retry-after", b"1")])
            if time.monotonic() - started >= spec.timeout:
                raise Unavailable(f"The model {spec.model!r} had no free slot within {spec.timeout:g} s "
                                  "(queue_timeout); retry shortly.", code="queue_timeout",
                                  headers=[(b"retry-after", str(QUEUE_FULL_RETRY_AFTER).encode())])
            if on_tick is not None:
                await on_tick(time.monotonic() - started)

    async def _keep(self) -> None:
        """Refresh every lease this loop holds, every LEASE_REFRESH_SECONDS, in one pipeline (one task for all,
        rather than a task per request); ends when none is held."""
        while self.held:
            await asyncio.sleep(LEASE_REFRESH_SECONDS)
            expiry = f"{time.time() + LEASE_SECONDS:.6f}"
            try:
                async with self._redis().pipeline(transaction=False) as pipe:
                    for ticket, serve in list(self.held.items()):
                        pipe.zadd(queue_keys(serve)[0], {ticket: expiry}, xx=True)
                    await pipe.execute()
            except Exception:  # a lease not refreshed expires; the next round tries again
                log.debug("could not refresh the queue leases", exc_info=True)

    def _release_soon(self, spec: QueueSpec, ticket: str) -> None:
        task = asyncio.get_running_loop().create_task(self._leave(spec, ticket))
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _leave(self, spec: QueueSpec, ticket: str) -> None:
        try:
            await asyncio.shield(self._run("leave", spec, ticket))
        except Exception:  # the lease expires on its own; never fail the answer over it
            if self.down_since is not None:
                return  # said once already, when Redis stopped answering
            log.warning("could not release %s's queue slot (it expires in %.0f s)", spec.serve, LEASE_SECONDS,
                        exc_info=True)


_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ServeQueues] = weakref.WeakKeyDictionary()


def serve_queues() -> ServeQueues:
    loop = asyncio.get_running_loop()
    found = _queues.get(loop)
    if found is None:
        found = _queues[loop] = ServeQueues()
    return found
