"""/healthz (the process answers) and /readyz (what it depends on answers).

Both run ahead of Django's middleware: a load balancer's probe must not depend
on ALLOWED_HOSTS, sessions or the database connection of a page view.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from anvil_site.environment import describe_redis

CHECK_TIMEOUT = 3.0

_migrations_applied = False  # once true it stays true for the life of the process


async def _send_json(send: Any, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def healthz_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await _send_json(send, 200, {"status": "ok"})


def _check_database() -> str:
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_migrations() -> str:
    global _migrations_applied
    if _migrations_applied:
        return "ok"
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        names = ", ".join(f"{m.app_label}.{m.name}" for m, _ in pending[:5])
        raise RuntimeError(f"{len(pending)} migration(s) not applied ({names}); run: python manage.py migrate")
    _migrations_applied = True
    return "ok"


async def _check_redis() -> str:
    timeout = min(settings.ANVIL_REDIS_TIMEOUT, CHECK_TIMEOUT)
    client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "ok"


async def _run(name: str, check: Any) -> tuple[str, str]:
    try:
        return name, await asyncio.wait_for(check, CHECK_TIMEOUT)
    except TimeoutError:
        return name, f"error: no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:  # the probe reports the failure; it must not raise
        text = str(exc) or type(exc).__name__
        return name, f"error: {text}"


async def readiness() -> tuple[bool, dict[str, str]]:
    results = dict(
        await asyncio.gather(
            _run("database", database_sync_to_async(_check_database)()),
            _run("migrations", database_sync_to_async(_check_migrations)()),
            _run("redis", _check_redis()),
        )
    )
    if results["redis"] != "ok":
        results["redis"] += f" ({describe_redis(settings.REDIS_URL)})"
    return all(value == "ok" for value in results.values()), results


async def readyz_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ready, results = await readiness()
    failing = [name for name, value in results.items() if value != "ok"]
    payload: dict[str, object] = {"status": "ready" if ready else "unready", "checks": results}
    if failing:
        payload["failing"] = failing
    await _send_json(send, 200 if ready else 503, payload)
