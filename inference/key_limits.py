"""Per-key rate limits shared by every web process through Redis: requests per minute, tokens per minute and
requests at once (docs/keys.md).

Requests and tokens are token buckets that refill continuously (a key with ``rpm = 60`` gets one request a
second back, and at most 60 at once after a quiet minute), as OpenAI's limits do. A request takes, in one
Lua script (one round trip):

* one request from the ``rpm`` bucket;
* its token reservation from the ``tpm`` bucket: the prompt, estimated from its characters (4 per token),
  plus the completion's ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``), else
  ``ANVIL_DEFAULT_MAX_TOKENS``; a reservation larger than the whole limit is refused outright;
* a lease on one of ``max_concurrent`` slots (a lease expires after ``ANVIL_KEY_LEASE_SECONDS``, so a web
  process that dies cannot hold a key's slots for good).

All or nothing: a refusal takes nothing. When the request ends, a second script (off the client's time)
returns the lease and corrects the reservation to the usage the serve reported: unused tokens go back,
tokens past the reservation are charged (the bucket may go below zero: the next requests wait). A key
with no limit set never reaches this module. Redis away: requests go on unlimited, said once in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from django.conf import settings

from inference.auth import Principal
from inference.errors import RateLimited

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
WINDOW = 60.0  # seconds: limits are per minute

# KEYS: requests bucket, tokens bucket, leases. ARGV: now, rpm, tpm, max_concurrent (0: none), tokens to
# reserve, lease id, lease expiry. Returns {taken, refused limit, wait seconds, requests left, tokens left,
# requests in flight}; numbers as strings (Lua numbers would be cut to integers).
ADMIT = """
local now, rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local function level(key, limit)
  local row = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(row[1]), tonumber(row[2])
  if not lvl then return limit end
  return math.min(limit, lvl + (now - at) * limit / 60)
end
local requests = rpm > 0 and level(KEYS[1], rpm) or 0
local tokens = tpm > 0 and level(KEYS[2], tpm) or 0
local active = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  active = redis.call('ZCARD', KEYS[3])
end
local function refuse(limit, wait)
  return {0, limit, tostring(wait), tostring(requests), tostring(tokens), active}
end
if rpm > 0 and requests < 1 then return refuse('requests', (1 - requests) * 60 / rpm) end
if tpm > 0 and need > tpm then return refuse('tokens_too_large', 0) end
if tpm > 0 and tokens < need then return refuse('tokens', (need - tokens) * 60 / tpm) end
if conc > 0 and active >= conc then return refuse('concurrent', 1) end
if rpm > 0 then
  requests = requests - 1
  redis.call('HSET', KEYS[1], 'level', tostring(requests), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  tokens = tokens - need
  redis.call('HSET', KEYS[2], 'level', tostring(tokens), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], 3600)
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[7]), ARGV[6])
  redis.call('EXPIRE', KEYS[3], math.ceil(tonumber(ARGV[7]) - now) + 60)
  active = active + 1
end
return {1, '', '0', tostring(requests), tostring(tokens), active}
"""

# KEYS: tokens bucket, leases. ARGV: now, tpm (0: none), tokens to give back (negative: to charge), lease id.
RELEASE = """
local now, tpm, back = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and back ~= 0 then
  local row = redis.call('HMGET', KEYS[1], 'level', 'at')
  local lvl, at = tonumber(row[1]), tonumber(row[2])
  if lvl then
    lvl = math.min(tpm, math.min(tpm, lvl + (now - at) * tpm / 60) + back)
    redis.call('HSET', KEYS[1], 'level', tostring(lvl), 'at', tostring(now))
    redis.call('EXPIRE', KEYS[1], 3600)
  end
end
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""


@dataclass
class Ticket:
    """One admitted request: what it reserved, and what to correct when it ends."""

    principal: Principal
    reserved: int
    lease: str
    used: int | None = None  # prompt + completion tokens as the serve reported them

    def settle(self, prompt_tokens: int | None, completion_tokens: int | None, *, served: bool) -> None:
        """What the request used: the serve's usage when it reported one; nothing when no serve answered; else
        (a stream cut short, a serve that reports no usage) the reservation stands."""
        if prompt_tokens is not None or completion_tokens is not None:
            self.used = (prompt_tokens or 0) + (completion_tokens or 0)
        elif not served:
            self.used = 0


PROMPT_FIELDS = ("messages", "prompt", "input", "system", "tools", "instructions")
CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens")


def reservation(body: dict[str, Any], default_cap: int | None = None) -> int:
    """Tokens a request reserves: its prompt, estimated from characters, and its completion's cap (else
    ``default_cap``, else ``ANVIL_DEFAULT_MAX_TOKENS``). A body with no prompt field (``/generate``'s token
    ids, a tokenizer call) is estimated whole."""
    prompt = {k: v for k, v in body.items() if k in PROMPT_FIELDS} or body
    estimate = math.ceil(len(json.dumps(prompt, ensure_ascii=False)) / CHARS_PER_TOKEN)
    cap = next((body[k] for k in CAP_FIELDS if isinstance(body.get(k), int) and not isinstance(body.get(k), bool)),
               None)
    if cap is None:
        cap = settings.ANVIL_DEFAULT_MAX_TOKENS if default_cap is None else default_cap
    return estimate + cap


def reset_text(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(round(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def rate_headers(principal: Principal, requests: float, tokens: float) -> dict[bytes, bytes]:
    """OpenAI's ``x-ratelimit-*`` headers for the limits the key has."""
    headers = {}
    for name, limit, left in (("requests", principal.rpm, requests), ("tokens", principal.tpm, tokens)):
        if limit:
            headers[f"x-ratelimit-limit-{name}".encode()] = str(limit).encode()
            headers[f"x-ratelimit-remaining-{name}".encode()] = str(max(math.floor(left), 0)).encode()
            headers[f"x-ratelimit-reset-{name}".encode()] = reset_text((limit - left) * WINDOW / limit).encode()
    return headers


class KeyLimiter:
    """The limiter of one event loop: its Redis client and scripts."""

    def __init__(self) -> None:
        self.client: redis.asyncio.Redis | None = None
        self.admit_script: Any = None
        self.release_script: Any = None
        self.degraded = False
        self.background: set[asyncio.Task[None]] = set()

    def _redis(self) -> redis.asyncio.Redis:
        if self.client is None:
            self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                 socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            self.admit_script = self.client.register_script(ADMIT)
            self.release_script = self.client.register_script(RELEASE)
        return self.client

    @staticmethod
    def _keys(principal: Principal) -> list[str]:
        base = f"{settings.ANVIL_REDIS_PREFIX}:kl:{principal.key_id}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:leases"]

    async def admit(self, principal: Principal, body: dict[str, Any], tags: dict[bytes, bytes],
                    default_cap: int | None = None) -> Ticket | None:
        """Take the request's share of the key's limits, or raise RateLimited; None when Redis is away."""
        need = reservation(body, default_cap) if principal.tpm else 0
        lease = uuid.uuid4().hex
        now = time.time()
        self._redis()
        try:
            taken, limit, wait, requests, tokens, active = await self.admit_script(
                keys=self._keys(principal),
                args=[now, principal.rpm or 0, principal.tpm or 0, principal.max_concurrent or 0, need, lease,
                      now + settings.ANVIL_KEY_LEASE_SECONDS])
        except redis.RedisError:
            if not self.degraded:
                self.degraded = True
                log.warning("rate limits are off until Redis answers again: requests go on unlimited")
            return None
        if self.degraded:
            self.degraded = False
            log.warning("Redis answers again: rate limits are back on")
        tags.update(rate_headers(principal, float(requests), float(tokens)))
        if not taken:
            raise refusal(principal, limit.decode() if isinstance(limit, bytes) else limit, float(wait), need,
                          int(active))
        return Ticket(principal, need, lease)

    def release(self, ticket: Ticket) -> None:
        """Return the lease and correct the reservation, in the background (never on the client's time)."""
        back = ticket.reserved - ticket.used if ticket.used is not None and ticket.principal.tpm else 0
        task = asyncio.get_running_loop().create_task(self._release(ticket, back))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _release(self, ticket: Ticket, back: int) -> None:
        keys = self._keys(ticket.principal)
        try:
            await self.release_script(keys=[keys[1], keys[2]],
                                      args=[time.time(), ticket.principal.tpm or 0, back, ticket.lease])
        except redis.RedisError:  # the lease expires on its own; the tokens stay charged
            log.debug("could not release a rate-limit lease", exc_info=True)


def refusal(principal: Principal, limit: str, wait: float, need: int, active: int) -> RateLimited:
    retry = [(b"retry-after", str(max(math.ceil(wait), 1)).encode())]
    if limit == "requests":
        return RateLimited(f"This API key's limit of {principal.rpm} requests per minute is used up; retry in "
                           f"{wait:.1f} s.", headers=retry)
    if limit == "tokens_too_large":
        return RateLimited(f"This request reserves {need} tokens (its prompt and max_tokens), more than this API "
                           f"key's {principal.tpm} tokens per minute: lower max_tokens or shorten the prompt.",
                           code="tokens_exceed_limit")
    if limit == "tokens":
        return RateLimited(f"This request reserves {need} tokens (its prompt and max_tokens), more than is left of "
                           f"this API key's {principal.tpm} tokens per minute; retry in {wait:.1f} s, or lower "
                           "max_tokens.", headers=retry)
    return RateLimited(f"This API key has {active} requests in flight, its limit (max_concurrent "
                       f"{principal.max_concurrent}); retry when one finishes.", headers=retry)


_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, KeyLimiter] = weakref.WeakKeyDictionary()


def limiter() -> KeyLimiter:
    loop = asyncio.get_running_loop()
    found = _limiters.get(loop)
    if found is None:
        found = _limiters[loop] = KeyLimiter()
    return found


@asynccontextmanager
async def limited(principal: Principal | None, body: dict[str, Any] | None, tags: dict[bytes, bytes],
                  default_cap: int | None = None) -> AsyncIterator[Ticket | None]:
    """Hold the request's share of its key's limits (nothing at all for a key without limits).
    ``default_cap``: the completion a request without a cap reserves (0 for paths that generate nothing)."""
    if principal is None or not principal.limited:
        yield None
        return
    ticket = await limiter().admit(principal, body or {}, tags, default_cap)
    try:
        yield ticket
    finally:
        if ticket is not None:
            limiter().release(ticket)
