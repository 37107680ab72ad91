"""Each web process's share of its keys' limits: grants taken from Redis in chunks and spent locally.

The limits live in Redis (``inference/key_limits.py`` says what they are). Asking Redis for every request
costs a round trip (0.2 ms from Python here, more under load), so a process takes a little more than the
request needs, a **grant** (a twentieth of each limit: ``GRANT_SHARE``), and admits the next requests
from it without Redis. What is granted is taken from the shared buckets, so the processes together never
go past a limit; the price is that a grant idle in one process is not available to another until it is
given back, which happens:

* at the process's next sync for that key (every sync gives back what its grant has left and takes a new one);
* within ``GRANT_SECONDS`` of the key going quiet (a sweeper task, while any grant holds something);
* at once when a correction leaves more than a chunk in the grant (a finished request's unused tokens).

A small limit has a chunk of 0 (``rpm`` 5, ``max_concurrent`` 1): every request syncs, and the limit is
exact across processes. Concurrency is counted per process in a hash (``…:slots``): a field per process
with the slots it holds and when they expire; the sweeper refreshes them while requests run, so a dead
process's slots are free after ``ANVIL_KEY_LEASE_SECONDS``.

One Lua script (``SYNC``) does every exchange: give back, check this request, take it, grant the next chunk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from django.conf import settings

log = logging.getLogger(__name__)

GRANT_SHARE = 1 / 20  # of each limit, taken ahead by a process
MAX_GRANT_SLOTS = 64
GRANT_SECONDS = 1.0  # a grant older than this is given back (at the next sync, or by the sweeper)
HEARTBEAT_SECONDS = 30.0  # slots in use are refreshed this often in Redis

# KEYS: requests bucket, tokens bucket, slots hash, the period's spend.
# ARGV: 1 now; 2-5 rpm, tpm, max_concurrent, budget (0: none); 6-9 this request's need: requests (1, or 0 for
# a sync that only gives back), tokens, cost, slot (1 or 0); 10-13 the chunk wanted ahead: requests, tokens,
# spend, slots; 14-16 given back: requests, tokens, spend (a negative number charges); 17 this process's
# field; 18 slots it has in use (this request not counted); 19 the slots' lifetime; 20 the spend's lifetime.
# Returns {taken, refused limit, wait, requests level, tokens level, slots busy, spent, granted requests,
# tokens, spend, this process's slots}; numbers as strings (Lua numbers would be cut to integers).
SYNC = """
local now = tonumber(ARGV[1])
local rpm, tpm, conc, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local need_r, need_t, cost, need_s = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local chunk_r, chunk_t, chunk_s, chunk_slots = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]),
  tonumber(ARGV[13])
local back_r, back_t, back_s = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local proc, in_use = ARGV[17], tonumber(ARGV[18])
local function level(key, limit)
  local row = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(row[1]), tonumber(row[2])
  if not lvl then return limit end
  return math.min(limit, lvl + (now - at) * limit / 60)
end
local requests = rpm > 0 and math.min(rpm, level(KEYS[1], rpm) + back_r) or 0
local tokens = tpm > 0 and math.min(tpm, level(KEYS[2], tpm) + back_t) or 0
local spent = 0
if budget > 0 then
  local raw = redis.call('GET', KEYS[4])
  if raw then
    spent = tonumber(raw) - back_s
  elseif need_r > 0 then
    return {0, 'unseeded', '0', tostring(requests), tostring(tokens), 0, '0', '0', '0', '0', 0}
  else
    budget = 0  -- giving back to a period whose counter is gone (past, or lost): nothing to give back to
  end
end
local others = 0
if conc > 0 then
  local rows = redis.call('HGETALL', KEYS[3])
  for i = 1, #rows, 2 do
    local count, expiry = string.match(rows[i + 1], '(%S+) (%S+)')
    if tonumber(expiry) < now then
      redis.call('HDEL', KEYS[3], rows[i])
    elseif rows[i] ~= proc then
      others = others + tonumber(count)
    end
  end
end
local refused, wait = '', 0
if need_r > 0 then
  if budget > 0 and spent >= budget then refused = 'budget'
  elseif rpm > 0 and requests < 1 then refused, wait = 'requests', (1 - requests) * 60 / rpm
  elseif tpm > 0 and need_t > tpm then refused = 'tokens_too_large'
  elseif tpm > 0 and tokens < need_t then refused, wait = 'tokens', (need_t - tokens) * 60 / tpm
  elseif conc > 0 and need_s > 0 and in_use + 1 > conc - others then refused, wait = 'concurrent', 1
  end
end
local grant_r, grant_t, grant_s, own = 0, 0, 0, in_use
if refused == '' then
  if rpm > 0 then
    requests = requests - need_r
    grant_r = math.max(0, math.min(chunk_r, math.floor(requests)))
    requests = requests - grant_r
  end
  if tpm > 0 then
    tokens = tokens - need_t
    grant_t = math.max(0, math.min(chunk_t, math.floor(tokens)))
    tokens = tokens - grant_t
  end
  if budget > 0 then
    spent = spent + cost
    grant_s = math.max(0, math.min(chunk_s, budget - spent))
    spent = spent + grant_s
  end
  if conc > 0 then
    own = math.max(in_use + need_s, math.min(in_use + need_s + chunk_slots, conc - others))
  end
end
if rpm > 0 then
  redis.call('HSET', KEYS[1], 'level', tostring(requests), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  redis.call('HSET', KEYS[2], 'level', tostring(tokens), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], 3600)
end
if budget > 0 then
  redis.call('SET', KEYS[4], tostring(spent), 'EX', tonumber(ARGV[20]))
end
if conc > 0 then
  if own > 0 then
    redis.call('HSET', KEYS[3], proc, own .. ' ' .. (now + tonumber(ARGV[19])))
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[19]) + 60)
  else
    redis.call('HDEL', KEYS[3], proc)
  end
end
return {refused == '' and 1 or 0, refused, tostring(wait), tostring(requests), tostring(tokens), others + own,
        tostring(spent), tostring(grant_r), tostring(grant_t), tostring(grant_s), own}
"""


@dataclass(frozen=True)
class Limits:
    """A key's limits, and the chunk of each a process takes ahead."""

    rpm: int = 0
    tpm: int = 0
    concurrent: int = 0
    budget: float = 0.0

    @property
    def chunks(self) -> tuple[int, int, float, int]:
        return (math.floor(self.rpm * GRANT_SHARE), math.floor(self.tpm * GRANT_SHARE), self.budget * GRANT_SHARE,
                min(math.floor(self.concurrent * GRANT_SHARE), MAX_GRANT_SLOTS))


@dataclass
class Need:
    """What one request takes: a request, its token reservation, its cost's worst case, a slot."""

    tokens: int = 0
    cost: float = 0.0


@dataclass
class Reply:
    taken: bool
    refused: str
    wait: float
    requests: float  # the shared buckets' levels after this sync, and what is busy or spent
    tokens: float
    busy: int
    spent: float


@dataclass
class Grant:
    """What one process holds of one key's limits."""

    requests: float = 0.0
    tokens: float = 0.0
    spend: float = 0.0
    slots: int = 0  # held in Redis
    in_use: int = 0  # of those, held by requests now
    view: Reply | None = None  # the last sync's answer
    synced_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    context: tuple[list[str], Limits, int] | None = None  # what a give-back needs: Redis keys, limits, lifetime

    def fresh(self, now: float) -> bool:
        return now - self.synced_at < GRANT_SECONDS

    def covers(self, limits: Limits, need: Need, now: float) -> bool:
        return (self.view is not None and self.fresh(now)
                and (not limits.rpm or self.requests >= 1) and (not limits.tpm or self.tokens >= need.tokens)
                and (not limits.budget or (self.spend >= need.cost and self.view.spent < limits.budget))
                and (not limits.concurrent or self.in_use < self.slots))

    def take(self, limits: Limits, need: Need) -> None:
        self.requests -= 1 if limits.rpm else 0
        self.tokens -= need.tokens if limits.tpm else 0
        self.spend -= need.cost if limits.budget else 0
        self.in_use += 1 if limits.concurrent else 0

    def holds_extra(self, limits: Limits) -> bool:
        """Twice a chunk or more idle here (a correction's tokens, slots requests let go): worth giving back now.
        With a chunk of 0 (a small limit), anything idle is."""
        chunk_r, chunk_t, chunk_s, chunk_slots = limits.chunks
        return (self.requests > 2 * chunk_r + 1 or self.tokens > 2 * chunk_t + 1
                or self.spend > 2 * chunk_s + 1e-9 or self.slots - self.in_use > 2 * chunk_slots)

    def idle_holdings(self) -> bool:
        """Anything to settle with Redis: an unused grant, a charge past a reservation, slots no request holds."""
        return (self.requests >= 1 or abs(self.tokens) >= 1 or abs(self.spend) > 1e-12
                or self.slots > self.in_use)


class Grants:
    """The grants of one event loop's web process, and the sweeper that gives idle ones back."""

    def __init__(self) -> None:
        self.client: redis.asyncio.Redis | None = None
        self.script: Any = None
        self.grants: dict[tuple[int, str], Grant] = {}  # (key id, budget period's spend key) -> its grant
        self.field = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.sweeper: asyncio.Task[None] | None = None
        self.syncs = 0  # round trips to Redis (what the grants save is the requests admitted without one)

    def redis(self) -> redis.asyncio.Redis:
        if self.client is None:
            self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                 socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            self.script = self.client.register_script(SYNC)
        return self.client

    def grant(self, key_id: int, spend_key: str) -> Grant:
        found = self.grants.get((key_id, spend_key))
        if found is None:
            found = self.grants[(key_id, spend_key)] = Grant()
        return found

    async def sync(self, keys: list[str], limits: Limits, grant: Grant, need: Need | None, *,
                   keep: bool, spend_lifetime: int) -> Reply:
        """One exchange with Redis (the caller holds ``grant.lock``): give back what the grant holds (all of it,
        or what is past a chunk when ``keep``), check and take ``need`` (None: give back only), and take the
        next chunk ahead (only with a need). A RedisError leaves the grant as it was."""
        chunk_r, chunk_t, chunk_s, chunk_slots = limits.chunks
        kept = (min(grant.requests, chunk_r), min(grant.tokens, chunk_t), min(grant.spend, chunk_s)) if keep \
            else (0.0, 0.0, 0.0)
        back = (grant.requests - kept[0], grant.tokens - kept[1], grant.spend - kept[2])
        asking = need is not None
        args = [time.time(), limits.rpm, limits.tpm, limits.concurrent, limits.budget,
                1 if asking else 0, need.tokens if need else 0, need.cost if need else 0,
                1 if asking and limits.concurrent else 0,
                chunk_r if asking else 0, chunk_t if asking else 0, chunk_s if asking else 0,
                chunk_slots if asking or keep else 0,
                back[0], back[1], back[2], self.field, grant.in_use, settings.ANVIL_KEY_LEASE_SECONDS, spend_lifetime]
        self.redis()
        self.syncs += 1
        row = await self.script(keys=keys, args=args)
        reply = Reply(bool(row[0]), row[1].decode() if isinstance(row[1], bytes) else row[1], float(row[2]),
                      float(row[3]), float(row[4]), int(row[5]), float(row[6]))
        if reply.refused == "unseeded":
            return reply  # nothing was applied
        grant.requests, grant.tokens, grant.spend = kept
        if reply.taken:
            grant.requests += float(row[7])
            grant.tokens += float(row[8])
            grant.spend += float(row[9])
            if asking and limits.concurrent:
                grant.in_use += 1
        grant.slots = int(row[10])
        grant.view = reply
        if asking:
            grant.synced_at = time.monotonic()
        self._sweep_later()
        return reply

    def _sweep_later(self) -> None:
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        """Every GRANT_SECONDS: give back grants gone stale, refresh the slots requests hold; stop when idle."""
        beat = time.monotonic()
        while True:
            await asyncio.sleep(GRANT_SECONDS)
            now = time.monotonic()
            heartbeat = now - beat >= HEARTBEAT_SECONDS
            if heartbeat:
                beat = now
            holding = False
            for grant in list(self.grants.values()):
                if grant.view is None or grant.lock.locked():
                    holding = holding or grant.in_use > 0
                    continue
                stale = not grant.fresh(now) and grant.idle_holdings()
                if stale or (heartbeat and grant.in_use):
                    await self._give_back(grant)
                holding = holding or grant.in_use > 0 or grant.idle_holdings()
            if not holding:
                return

    async def _give_back(self, grant: Grant, keep: bool = False) -> None:
        if grant.context is None:
            return
        keys, limits, spend_lifetime = grant.context
        async with grant.lock:
            try:
                await self.sync(keys, limits, grant, None, keep=keep, spend_lifetime=spend_lifetime)
            except redis.RedisError:
                log.debug("could not give a rate-limit grant back (Redis)", exc_info=True)

    def give_back_soon(self, grant: Grant) -> None:
        """Give back what a grant holds past a chunk, in the background (never on the client's time)."""
        task = asyncio.get_running_loop().create_task(self._give_back(grant, keep=True))
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()
