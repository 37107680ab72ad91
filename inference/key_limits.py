"""Per-key rate limits and budgets shared by every web process through Redis: requests per minute, tokens per
minute, requests at once, and spend per period (docs/keys.md; the budget's side: ``inference/key_budget.py``).

Requests and tokens are token buckets that refill continuously (a key with ``rpm = 60`` gets one request a
second back, and at most 60 at once after a quiet minute), as OpenAI's limits do. A request takes, all or
nothing (a refusal takes nothing):

* one request from the ``rpm`` bucket;
* its token reservation from the ``tpm`` bucket: the prompt, estimated from its characters (4 per token),
  plus the completion's ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``), else
  ``ANVIL_DEFAULT_MAX_TOKENS``; a reservation larger than the whole limit is refused outright;
* one of ``max_concurrent`` slots;
* the worst case of its cost (its tokens at the priciest candidate's price) from the period's budget,
  refused once the spend has reached the budget.

It takes them from this process's grant when the grant covers it (no Redis at all), else in one round trip
that also takes the next grant (``inference/key_grants.py``). When the request ends, its slot and the
correction of its reservations (to the usage the serve reported: unused tokens and cost go back, usage past
the reservation is charged) go to the grant, and from there to Redis. A key with no limit never reaches
this module. Redis away: requests go on unlimited, said once in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from channels.db import database_sync_to_async
from django.conf import settings

from inference import key_budget
from inference.auth import Principal
from inference.errors import FrontDoorError, QuotaExhausted, RateLimited
from inference.key_grants import Grant, Grants, Limits, Need

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
LIMITS_TIMING = "limits"  # the admission's phase in Server-Timing
WINDOW = 60.0  # seconds: limits are per minute

@dataclass
class Ticket:
    """One admitted request: what it reserved, and what to correct when it ends."""

    principal: Principal
    reserved: int  # tokens
    cost_reserved: float  # USD: its tokens at the priciest candidate's price
    grant: Grant
    limits: Limits
    used: int | None = None  # prompt + completion tokens as the serve reported them
    cost: float | None = None  # USD at the answering serve's prices

    def settle(self, prompt_tokens: int | None, completion_tokens: int | None, *, served: bool,
               cost: float | None = None) -> None:
        """What the request used: the serve's usage when it reported one; nothing when no serve answered; else
        (a stream cut short, a serve that reports no usage) the reservation stands."""
        if prompt_tokens is not None or completion_tokens is not None:
            self.used = (prompt_tokens or 0) + (completion_tokens or 0)
            self.cost = cost
        elif not served:
            self.used, self.cost = 0, 0.0


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
    """The limiter of one event loop: admits from this process's grants, syncing with Redis when they run out."""

    def __init__(self) -> None:
        self.grants = Grants()
        self.degraded = False
        self.alerted: set[str] = set()  # the periods already said to be past a key's alert (this process)
        self.background: set[asyncio.Task[None]] = set()

    async def admit(self, principal: Principal, body: dict[str, Any], tags: dict[bytes, bytes],
                    default_cap: int | None = None, price: float = 0.0) -> Ticket | None:
        """Take the request's share of the key's limits and budget, or raise RateLimited or QuotaExhausted;
        None when Redis is away. ``price``: USD per token at the priciest serve that may answer."""
        budget = principal.budget_usd or 0.0
        limits = Limits(principal.rpm or 0, principal.tpm or 0, principal.max_concurrent or 0, budget)
        need = Need(reservation(body, default_cap) if principal.tpm or budget else 0)
        need.cost = need.tokens * price if budget else 0.0
        spend_key = key_budget.spent_key(principal.key_id, principal.budget_period) if budget else ""
        grant = self.grants.grant(principal.key_id, spend_key)
        if not grant.covers(limits, need, time.monotonic()):
            try:
                async with grant.lock:
                    if not grant.covers(limits, need, time.monotonic()):  # another request may have synced
                        return await self._admit_synced(principal, limits, need, grant, spend_key, tags)
            except redis.RedisError:
                if not self.degraded:
                    self.degraded = True
                    log.warning("rate limits and budgets are off until Redis answers again: requests go on "
                                "unlimited")
                return None
        grant.take(limits, need)
        self._headers(principal, grant, tags)
        return Ticket(principal, need.tokens, need.cost, grant, limits)

    async def _admit_synced(self, principal: Principal, limits: Limits, need: Need, grant: Grant, spend_key: str,
                            tags: dict[bytes, bytes]) -> Ticket:
        base = f"{settings.ANVIL_REDIS_PREFIX}:kl:{principal.key_id}"
        lifetime = key_budget.seconds_left(principal.budget_period) + 86400
        grant.context = ([f"{base}:requests", f"{base}:tokens", f"{base}:slots", spend_key or f"{base}:nospend"],
                         limits, lifetime)
        keys = grant.context[0]
        reply = await self.grants.sync(keys, limits, grant, need, keep=False, spend_lifetime=lifetime)
        if reply.refused == "unseeded":
            await self._seed(principal, spend_key, lifetime)
            reply = await self.grants.sync(keys, limits, grant, need, keep=False, spend_lifetime=lifetime)
        if self.degraded:
            self.degraded = False
            log.warning("Redis answers again: rate limits and budgets are back on")
        self._headers(principal, grant, tags)
        if limits.budget and reply.spent >= limits.budget * principal.budget_alert / 100:
            self._alert(principal, reply.spent)
        if not reply.taken:
            raise refusal(principal, reply.refused, reply.wait, need.tokens, reply.busy, reply.spent)
        return Ticket(principal, need.tokens, need.cost, grant, limits)

    async def _seed(self, principal: Principal, key: str, lifetime: int) -> None:
        """The period's spend from the decision log, for a counter Redis does not have (first use, or lost)."""
        spent = await database_sync_to_async(key_budget.spent_in_period)(principal.key_id, principal.budget_period)
        await self.grants.redis().set(key, str(spent), nx=True, ex=lifetime)

    @staticmethod
    def _headers(principal: Principal, grant: Grant, tags: dict[bytes, bytes]) -> None:
        if grant.view is not None and (principal.rpm or principal.tpm):
            tags.update(rate_headers(principal, grant.view.requests + grant.requests,
                                     grant.view.tokens + grant.tokens))

    def _alert(self, principal: Principal, spent: float) -> None:
        """Past the key's alert: logged once per period (across processes: a flag in Redis)."""
        flag = key_budget.alerted_key(principal.key_id, principal.budget_period)
        if flag in self.alerted:
            return
        self.alerted.add(flag)

        async def say_once() -> None:
            try:
                lifetime = key_budget.seconds_left(principal.budget_period) + 86400
                if await self.grants.redis().set(flag, "1", nx=True, ex=lifetime):
                    key_budget.alert(principal.name, spent, principal.budget_usd or 0.0, principal.budget_period)
            except redis.RedisError:
                self.alerted.discard(flag)

        task = asyncio.get_running_loop().create_task(say_once())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def release(self, ticket: Ticket) -> None:
        """The request ended: its slot and its corrections go back to this process's grant (to Redis in the
        background, once the grant holds more than a chunk)."""
        grant, limits = ticket.grant, ticket.limits
        if limits.concurrent:
            grant.in_use -= 1
        if limits.tpm and ticket.used is not None:
            grant.tokens += ticket.reserved - ticket.used
        if limits.budget and ticket.cost is not None:
            grant.spend += ticket.cost_reserved - ticket.cost
        if grant.holds_extra(limits):
            self.grants.give_back_soon(grant)


def refusal(principal: Principal, limit: str, wait: float, need: int, active: int,
            spent: float) -> FrontDoorError:
    retry = [(b"retry-after", str(max(math.ceil(wait), 1)).encode())]
    if limit == "budget":
        _, end = key_budget.period_bounds(principal.budget_period)
        return QuotaExhausted(f"You have reached your specified API usage limits: this API key has spent "
                              f"${spent:.4f} of its ${principal.budget_usd:.4f} {principal.budget_period}ly budget. "
                              f"Access resumes at {end:%Y-%m-%d %H:%M} UTC, or when an operator raises the budget.")
    if limit == "requests":
        return RateLimited(f"This API key's limit of {principal.rpm} requests per minute is used up; retry in "
                           f"{wait:.1f} s.", headers=retry)
    if limit == "unseeded":  # the period's counter vanished between seeding and reading it: rare, and brief
        return RateLimited("This API key's budget could not be read; retry.", headers=retry)
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
                  timing: dict[str, float], default_cap: int | None = None,
                  price: float = 0.0) -> AsyncIterator[Ticket | None]:
    """Hold the request's share of its key's limits and budget (nothing at all for a key without any).
    ``default_cap``: the completion a request without a cap reserves (0 for paths that generate nothing);
    ``price``: USD per token at the priciest serve that may answer (what the budget reserves)."""
    if principal is None or not principal.limited:
        yield None
        return
    started = time.perf_counter()
    ticket = await limiter().admit(principal, body or {}, tags, default_cap, price)
    timing[LIMITS_TIMING] = (time.perf_counter() - started) * 1000
    try:
        yield ticket
    finally:
        if ticket is not None:
            limiter().release(ticket)
