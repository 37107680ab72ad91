"""Per-serve circuit breakers, shared by every web process through Redis.

closed --(N consecutive failures)--> open --(cooldown)--> half-open: exactly one request
is let through as a probe; its success closes the breaker, its failure opens it again.
A probe that never reports (its process died) expires after ``probe_ttl`` and the next
request becomes the probe. The state machine lives in Lua scripts so that the check and
the claim of the probe are one atomic step across processes; ``MemoryBreakers`` runs the
same rules in memory, with an injected clock, for the state-machine tests. A set of
"troubled" serves (any failure on record) lets a web process skip Redis entirely for the
healthy ones (``routing.web_state`` mirrors it).
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOW, PROBE, SKIP = "allow", "probe", "skip"


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 3
    cooldown: float = 30.0
    probe_ttl: float = 60.0


class MemoryBreakers:
    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.rows: dict[str, dict[str, float]] = {}

    async def allow(self, serve: str, now: float) -> str:
        row = self.rows.setdefault(serve, {"failures": 0, "opened": 0.0, "probe_until": 0.0, "open": 0})
        if not row["open"]:
            return ALLOW
        if now - row["opened"] < self.config.cooldown:
            return SKIP
        if row["probe_until"] > now:
            return SKIP  # a probe is out
        row["probe_until"] = now + self.config.probe_ttl
        return PROBE

    async def record(self, serve: str, ok: bool, now: float) -> int:
        """The consecutive failures now on record; -1 when a success closed an open breaker."""
        row = self.rows.setdefault(serve, {"failures": 0, "opened": 0.0, "probe_until": 0.0, "open": 0})
        if ok:
            was_open = row["open"]
            row.update(failures=0, open=0, probe_until=0.0)
            return -1 if was_open else 0
        row["failures"] += 1
        row["last_failure"] = now
        if row["open"] or row["failures"] >= self.config.failures:
            row.update(open=1, opened=now, probe_until=0.0)
        return int(row["failures"])

    async def forget_before(self, serve: str, since: float) -> bool:
        """Clear the serve's record if every failure on it happened before ``since``; True if cleared."""
        row = self.rows.get(serve)
        if row is None or not 0 < row.get("last_failure", 0.0) < since:
            return False
        del self.rows[serve]
        return True



# KEYS[1] = the serve's hash; ARGV = now, cooldown, probe_ttl
_ALLOW = """
local open = tonumber(redis.call('HGET', KEYS[1], 'open') or '0')
if open == 0 then return 'allow' end
local now = tonumber(ARGV[1])
if now - tonumber(redis.call('HGET', KEYS[1], 'opened') or '0') < tonumber(ARGV[2]) then return 'skip' end
if tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') > now then return 'skip' end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[3]))
return 'probe'
"""
# KEYS[2] = the set of serves with any failure on record; ARGV = ok (1/0), now, failures threshold, serve
_RECORD = """
if ARGV[1] == '1' then
  local was_open = tonumber(redis.call('HGET', KEYS[1], 'open') or '0')
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[4])
  return -was_open
end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], 'last_failure', ARGV[2])
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local open = tonumber(redis.call('HGET', KEYS[1], 'open') or '0')
if open == 1 or failures >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'open', 1, 'opened', ARGV[2], 'probe_until', 0)
end
redis.call('EXPIRE', KEYS[1], 86400)
return failures
"""
# KEYS[1] = the serve's hash, KEYS[2] = the troubled set; ARGV = since, serve
_FORGET_BEFORE = """
local last = tonumber(redis.call('HGET', KEYS[1], 'last_failure') or '0')
if last > 0 and last < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


class RedisBreakers:
    def __init__(self, client: object, config: BreakerConfig, prefix: str) -> None:
        self.client = client
        self.config = config
        self.prefix = prefix
        self._allow = client.register_script(_ALLOW)  # type: ignore[attr-defined]
        self._record = client.register_script(_RECORD)  # type: ignore[attr-defined]
        self._forget_before = client.register_script(_FORGET_BEFORE)  # type: ignore[attr-defined]

    def _key(self, serve: str) -> str:
        return f"{self.prefix}:breaker:{serve}"

    @property
    def troubled_key(self) -> str:
        return f"{self.prefix}:breakers:troubled"

    async def allow(self, serve: str, now: float) -> str:
        result = await self._allow(keys=[self._key(serve)], args=[now, self.config.cooldown, self.config.probe_ttl])
        return result.decode() if isinstance(result, bytes) else str(result)

    async def record(self, serve: str, ok: bool, now: float) -> int:
        """The consecutive failures now on record; -1 when a success closed an open breaker."""
        return int(await self._record(keys=[self._key(serve), self.troubled_key],
                                      args=[1 if ok else 0, now, self.config.failures, serve]))

    async def forget_before(self, serve: str, since: float) -> bool:
        """Clear the serve's record if every failure on it happened before ``since`` (a load since: a
        new engine, not the one that failed); True if cleared. Atomic across processes."""
        return bool(await self._forget_before(keys=[self._key(serve), self.troubled_key], args=[since, serve]))

    async def troubled(self) -> set[str]:
        """The serves with any failure on record: the only ones whose breaker needs asking."""
        members = await self.client.smembers(self.troubled_key)  # type: ignore[attr-defined]
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}
