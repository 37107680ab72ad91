"""Circuit breakers live in Redis for the whole test run: a test that wants a clean slate says so."""

from __future__ import annotations

import redis
from django.conf import settings


def forget_breakers(*serves: str) -> None:
    """Close these serves' breakers, as if they had never failed (the web process sees it at once:
    a serve's breaker is asked in Redis whenever its mirror says it has failures on record)."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        prefix = settings.ANVIL_REDIS_PREFIX
        for serve in serves:
            client.delete(f"{prefix}:breaker:{serve}")
            client.srem(f"{prefix}:breakers:troubled", serve)
    finally:
        client.close()
