"""The routing state a web process keeps: profile and classifier rules in snapshots, the policy
config from settings, and the Redis-shared circuit breakers."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref

import redis.asyncio
from django.conf import settings

from anvil_site.snapshots import Snapshot
from routing.breaker import ALLOW, SKIP, BreakerConfig, MemoryBreakers, RedisBreakers
from routing.classifier import DEFAULT_RULES, Rule
from routing.models import ClassifierRule, ProfileEntry
from routing.policy import PolicyConfig
from routing.profile import Profile, load_live_profile

log = logging.getLogger(__name__)


def _load_rules() -> tuple[Rule, ...]:
    rows = list(ClassifierRule.objects.filter(enabled=True))
    if not rows and not ClassifierRule.objects.exists():
        # A fresh database before the data migration has run: the built-in rules.
        return tuple(Rule.build(wc, prio, words) for wc, (prio, words) in DEFAULT_RULES.items())
    return tuple(Rule.build(row.work_class, row.priority, row.keyword_list()) for row in rows)


PROFILE: Snapshot[Profile] = Snapshot(ProfileEntry, load_live_profile, lambda: settings.ANVIL_PROFILE_SYNC_INTERVAL)
RULES: Snapshot[tuple[Rule, ...]] = Snapshot(ClassifierRule, _load_rules,
                                             lambda: settings.ANVIL_PROFILE_SYNC_INTERVAL)


def policy_config() -> PolicyConfig:
    return PolicyConfig(tuple(settings.ANVIL_TIER_ORDER), frozenset(settings.ANVIL_CLOUD_WORK_CLASSES))


def breaker_config() -> BreakerConfig:
    return BreakerConfig(settings.ANVIL_BREAKER_FAILURES, settings.ANVIL_BREAKER_COOLDOWN,
                         settings.ANVIL_BREAKER_PROBE_TTL)


_breakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisBreakers] = weakref.WeakKeyDictionary()


def breakers() -> RedisBreakers:
    loop = asyncio.get_running_loop()
    found = _breakers.get(loop)
    if found is None:
        client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                        socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        found = _breakers[loop] = RedisBreakers(client, breaker_config(), settings.ANVIL_REDIS_PREFIX)
    return found


class BreakerOutage:
    """Redis unreachable for the breakers: one line when it starts, one when it ends, never one per request."""

    def __init__(self) -> None:
        self.down_since: float | None = None

    def failed(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("circuit breakers: Redis unreachable (%s: %s); this process keeps its own breakers "
                        "until it answers", type(error).__name__, error)

    def answered(self) -> None:
        if self.down_since is not None:
            log.info("circuit breakers: Redis answers again after %.1f s; the shared breakers resume",
                     time.monotonic() - self.down_since)
            self.down_since = None


OUTAGE = BreakerOutage()
_local: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MemoryBreakers] = weakref.WeakKeyDictionary()


def local_breakers() -> MemoryBreakers:
    """This process's own breakers: they see only its requests, and decide while Redis cannot."""
    loop = asyncio.get_running_loop()
    found = _local.get(loop)
    if found is None:
        found = _local[loop] = MemoryBreakers(breaker_config())
    return found


class TroubledMirror:
    """This process's copy of the serves with failures on record, refreshed in the background.

    A healthy serve (not in the set) is allowed, and its successes recorded, without a Redis
    round trip. A failure anywhere puts the serve in the set; every process sees it within
    ``REFRESH_SECONDS`` and from then on asks Redis, where the state machine is atomic.
    """

    REFRESH_SECONDS = 0.25

    def __init__(self) -> None:
        self.serves: set[str] = set()
        self.refreshed_at = float("-inf")
        self.task: asyncio.Task[None] | None = None

    def troubled(self, serve: str) -> bool:
        now = time.monotonic()
        if now - self.refreshed_at >= self.REFRESH_SECONDS and (self.task is None or self.task.done()):
            self.refreshed_at = now
            self.task = asyncio.ensure_future(self._refresh())
        return serve in self.serves

    async def _refresh(self) -> None:
        try:
            self.serves = await breakers().troubled()
        except Exception as error:
            OUTAGE.failed(error)  # keep the last set; what fails meanwhile is added by breaker_record
        else:
            OUTAGE.answered()


_mirrors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TroubledMirror] = weakref.WeakKeyDictionary()


def mirror() -> TroubledMirror:
    loop = asyncio.get_running_loop()
    found = _mirrors.get(loop)
    if found is None:
        found = _mirrors[loop] = TroubledMirror()
    return found


async def breaker_allows(serve: str, loaded_at: float = 0.0) -> str:
    """allow | probe | skip: the shared breaker, or this process's own while Redis cannot answer.

    ``loaded_at``: when the serve last became loaded (epoch seconds). Failures that all came before it
    were the previous engine's (or a request that raced an unload): a fresh load starts with a closed
    breaker, instead of being skipped for a cooldown it did not earn."""
    if not mirror().troubled(serve):
        return ALLOW
    now = time.time()
    try:
        verdict = await breakers().allow(serve, now)
        if verdict == SKIP and loaded_at and await breakers().forget_before(serve, loaded_at):
            log.info("circuit closed: serve %s was loaded again after its failures", serve)
            verdict = ALLOW
    except Exception as error:
        OUTAGE.failed(error)
        own = local_breakers()
        verdict = await own.allow(serve, now)
        if verdict == SKIP and loaded_at and await own.forget_before(serve, loaded_at):
            verdict = ALLOW
        return verdict
    OUTAGE.answered()
    return verdict


async def breaker_record(serve: str, ok: bool) -> None:
    known, own = mirror(), local_breakers()
    local_failures = 0
    if not ok or serve in own.rows:
        local_failures = await own.record(serve, ok, time.time())  # in memory: what decides if Redis goes away
    if ok and not known.troubled(serve):
        return  # nothing on record to reset
    if not ok:
        known.serves.add(serve)  # this process asks Redis about it from now on
    try:
        failures = await breakers().record(serve, ok, time.time())
    except Exception as error:
        OUTAGE.failed(error)
        if local_failures == settings.ANVIL_BREAKER_FAILURES:
            log.warning("circuit opened in this process (Redis unreachable): serve %s failed %d times in a row",
                        serve, local_failures)
        return
    OUTAGE.answered()
    # One line per transition (whichever process sees it), so the terminal tells the story.
    if failures == -1:
        log.info("circuit closed: serve %s answered again", serve)
    elif failures == settings.ANVIL_BREAKER_FAILURES:
        log.warning("circuit opened: serve %s failed %d times in a row; skipped for %g s, then one probe", serve,
                    failures, settings.ANVIL_BREAKER_COOLDOWN)
