"""Circuit breakers: the state machine with an injected clock, and the same rules shared through real Redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import redis.asyncio
from asgiref.sync import async_to_sync
from django.conf import settings

from routing.breaker import ALLOW, PROBE, SKIP, BreakerConfig, MemoryBreakers, RedisBreakers
from tests.support.processes import ROOT

CONFIG = BreakerConfig(failures=3, cooldown=30, probe_ttl=60)


def scenario(breakers) -> list[str]:  # type: ignore[no-untyped-def]
    """The life of one serve's breaker; returns what allow() said at each step."""
    said = []

    async def go() -> None:
        for t in (0, 1):
            await breakers.record("s", False, t)
        said.append(await breakers.allow("s", 2))  # 2 failures: still closed
        await breakers.record("s", False, 3)  # the 3rd: open
        said.append(await breakers.allow("s", 10))  # open, cooling down
        said.append(await breakers.allow("s", 34))  # cooled: this one is the probe
        said.append(await breakers.allow("s", 35))  # a probe is out: nobody else
        await breakers.record("s", False, 36)  # the probe failed: open again
        said.append(await breakers.allow("s", 40))
        said.append(await breakers.allow("s", 67))  # cooled again: probe
        said.append(await breakers.allow("s", 130))  # that probe never reported: it expired, a new probe
        await breakers.record("s", True, 131)  # the probe succeeded: closed
        said.append(await breakers.allow("s", 132))

    async_to_sync(go)()
    return said


EXPECTED = [ALLOW, SKIP, PROBE, SKIP, SKIP, PROBE, PROBE, ALLOW]


def test_state_machine_in_memory() -> None:
    assert scenario(MemoryBreakers(CONFIG)) == EXPECTED


def redis_breakers(prefix: str) -> RedisBreakers:
    return RedisBreakers(redis.asyncio.from_url(settings.REDIS_URL), CONFIG, prefix)


def test_state_machine_in_redis_matches(redis_server: str) -> None:
    assert scenario(redis_breakers(f"test-breaker-{id(object())}")) == EXPECTED


def test_two_processes_share_one_breaker_and_exactly_one_probe(redis_server: str) -> None:
    prefix = f"test-shared-{id(object())}"
    child = textwrap.dedent(f"""
        import asyncio, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "anvil_site.settings")
        import django; django.setup()
        import redis.asyncio
        from django.conf import settings
        from routing.breaker import BreakerConfig, RedisBreakers
        async def main():
            b = RedisBreakers(redis.asyncio.from_url(settings.REDIS_URL), BreakerConfig(3, 30, 60), {prefix!r})
            if sys.argv[1] == "fail":
                for t in range(3):
                    await b.record("shared", False, t)
            else:
                print(await b.allow("shared", float(sys.argv[2])))
        asyncio.run(main())
    """)

    def other_process(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", child, *args], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    async def here() -> list[str]:
        breakers = redis_breakers(prefix)
        other_process("fail")  # another web process saw three failures
        seen = [await breakers.allow("shared", 5)]  # this process sees the open circuit
        seen.append(await breakers.allow("shared", 40))  # and takes the one probe …
        seen.append(other_process("allow", "41"))  # … which the other process then cannot
        return seen

    assert async_to_sync(here)() == [SKIP, PROBE, "skip"]


def reload_scenario(breakers) -> list[object]:  # type: ignore[no-untyped-def]
    """A serve's breaker opens on the old engine; the serve is loaded again at t=50."""
    said: list[object] = []

    async def go() -> None:
        for t in (0, 1, 2):
            await breakers.record("s", False, t)
        said.append(await breakers.allow("s", 10))  # open
        said.append(await breakers.forget_before("s", 1.5))  # a failure came after that load: kept
        said.append(await breakers.allow("s", 11))
        said.append(await breakers.forget_before("s", 50))  # every failure was the old engine's: cleared
        said.append(await breakers.allow("s", 51))  # the new engine starts closed, not cooling down
        await breakers.record("s", False, 52)
        said.append(await breakers.allow("s", 53))  # one new failure: closed, counting afresh

    async_to_sync(go)()
    return said


RELOAD_EXPECTED = [SKIP, False, SKIP, True, ALLOW, ALLOW]


def test_a_reload_clears_the_failures_of_the_engine_before_it() -> None:
    assert reload_scenario(MemoryBreakers(CONFIG)) == RELOAD_EXPECTED
    assert reload_scenario(redis_breakers(f"anvil-test-reload-{time.monotonic_ns()}")) == RELOAD_EXPECTED
