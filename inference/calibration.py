"""Live calibration on the hot path: which requests are sampled, and handing a sampled pair to Redis.

An operator turns sampling on per serve and work class (``evals.models.CalibrationSetting``, a
rate). Each web process keeps the rates in a snapshot (refreshed like the profile's, every
``ANVIL_PROFILE_SYNC_INTERVAL``); ``draw`` is a dict lookup that is false at once for a serve and
work class nobody samples, so sampling costs nothing where it is off. A sampled attempt keeps its
answer's text (``inference/attempt.py``); once the client has the whole answer, ``offer`` hands
the request and answer, as text, to Redis in the background: the request never waits for it, and
a Redis failure loses the sample, not the answer.

In Redis a sample is one key with a TTL (``ANVIL_CALIBRATION_SAMPLE_TTL``, default an hour),
listed by id in its serve and work class's queue (the queue holds ids only). The judge drains
them (``evals/calibration.py``) and deletes each once graded; turning sampling off deletes the
queue and its samples. Samples are never written to the database, and never logged: "no prompt
text at rest". A queue holds at most ``MAX_PENDING`` samples, so a judge that is down cannot
make Redis hold an hour of a busy serve's traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
import weakref
from typing import Any

import redis.asyncio
from django.conf import settings

from anvil_site.snapshots import Snapshot
from evals.models import CalibrationSetting
from inference.transcript import answer_text, request_text
from routing.verify import Answer

log = logging.getLogger(__name__)

MAX_PENDING = 1000  # samples waiting per serve and work class; more are not taken until the judge catches up

# Atomic: the cap, the sample with its TTL, its id in the queue, the queue's own TTL, and the queue in
# the registry of queues (which the drain reads instead of scanning the keyspace).
_PUSH = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
"""


# --- where samples live (shared with evals/calibration.py) --------------------
def sample_prefix() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:calibration:sample:"


def queue_prefix() -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:calibration:queue:"


def registry_key() -> str:
    """A set of the queue keys that may hold samples (key names only, no text)."""
    return f"{settings.ANVIL_REDIS_PREFIX}:calibration:queues"


def queue_key(serve: str, work_class: str) -> str:
    return f"{queue_prefix()}{serve}:{work_class}"


def sample_key(serve: str, work_class: str, sample_id: str) -> str:
    # Serve names are slugs and work classes have no colon: the key parses back unambiguously.
    return f"{sample_prefix()}{serve}:{work_class}:{sample_id}"


def sample_ttl() -> int:
    return max(1, int(settings.ANVIL_CALIBRATION_SAMPLE_TTL))


# --- the decision ---------------------------------------------------------------
def load_rates() -> dict[tuple[str, str], float]:
    """(serve, work class) -> rate, for the settings that sample: a rate above 0 and a judge to grade."""
    return {(row.serve.name, row.work_class): row.rate
            for row in CalibrationSetting.objects.filter(rate__gt=0, judge_serve__isnull=False,
                                                         serve__enabled=True).select_related("serve")}


SAMPLING: Snapshot[dict[tuple[str, str], float]] = Snapshot(
    CalibrationSetting, load_rates, lambda: settings.ANVIL_PROFILE_SYNC_INTERVAL)


_unreadable_since = float("-inf")  # when the settings last could not be read (logged once a minute at most)


async def draw(serve: str, work_class: str) -> bool:
    """Whether this attempt is sampled: false at once where sampling is off (a dict lookup)."""
    global _unreadable_since
    try:
        rates = await SAMPLING.get()
    except Exception:
        # Calibration is an option: a request is never refused because its settings cannot be read.
        if time.monotonic() - _unreadable_since > 60:
            _unreadable_since = time.monotonic()
            log.warning("calibration: the sampling settings cannot be read; nothing is sampled", exc_info=True)
        return False
    rate = rates.get((serve, work_class))
    return rate is not None and (rate >= 1.0 or random.random() < rate)


# --- the hand-off -----------------------------------------------------------------
_pending: set[asyncio.Task[None]] = set()
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = weakref.WeakKeyDictionary()


def _redis() -> redis.asyncio.Redis:
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = _clients[loop] = redis.asyncio.from_url(settings.REDIS_URL,
                                                        socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                        socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
    return found


def offer(serve: str, fingerprint: str, work_class: str, body: dict[str, Any], answer: Answer) -> None:
    """Hand a sampled request and its answer to Redis in the background; call once the client has the answer."""
    task = asyncio.get_running_loop().create_task(_push(serve, fingerprint, work_class, body, answer))
    _pending.add(task)  # a task nobody references may be collected before it runs
    task.add_done_callback(_pending.discard)


async def _push(serve: str, fingerprint: str, work_class: str, body: dict[str, Any], answer: Answer) -> None:
    sample_id = uuid.uuid4().hex
    sample = {"id": sample_id, "serve": serve, "fingerprint": fingerprint, "work_class": work_class,
              "at": time.time(), "request": request_text(body), "answer": answer_text(answer),
              "finish": answer.finish}
    try:
        keys = (queue_key(serve, work_class), sample_key(serve, work_class, sample_id), registry_key())
        taken = await _redis().eval(_PUSH, len(keys), *keys, sample_id, json.dumps(sample, ensure_ascii=False),
                                    sample_ttl(), MAX_PENDING)
    except Exception as error:
        # The type only: a Redis error never carries the sample, but nothing here may risk logging it.
        log.warning("calibration: could not hand a sample of %s / %s to Redis (%s)", serve, work_class,
                    type(error).__name__)
        return
    if not taken:
        log.info("calibration: %s / %s already has %d samples waiting for the judge; this one is not taken",
                 serve, work_class, MAX_PENDING)


async def settle() -> None:
    """Wait for the hand-offs under way (tests, and an event loop about to close)."""
    if _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)
