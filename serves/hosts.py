"""Host agents and their heartbeats (``manage.py runhost NAME``; docs/deploy.md).

An agent beats every ``ANVIL_HOST_HEARTBEAT`` seconds: a Redis key ``…:host:<name>`` that expires after
``HEARTBEAT_MISSES`` beats, and its ``Host`` row. A serve whose ``host`` has no live key is **unknown** to the
front door (``serves.catalog``): routing stops sending to it, says why (``host_silent``), and sends again the
moment the beats return. Its lifecycle work waits in the host's queue (``host.<name>``) meanwhile.

A task the dead agent had taken and not acknowledged (the load task is ``acks_late``) would come back only after
the broker's visibility timeout (an hour: it must outlast the longest load). An agent is the only consumer of its
queue, so when one starts (``take_over``) it waits out a predecessor's last beat, refuses to run beside a live
one, and puts back at once what the predecessor held: the redelivered load adopts the engine it started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable

import redis
import redis.asyncio
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from serves.models import Host
from serves.probes import gpus

log = logging.getLogger(__name__)

HEARTBEAT_MISSES = 3
ROW_SECONDS = 30.0  # how often the Host row's last_heartbeat is written (the Redis key is every beat)


def heartbeat_key(name: str) -> str:
    return f"{settings.ANVIL_REDIS_PREFIX}:host:{name}"


def reported_gpus(declared: dict[str, int] | None = None) -> list[dict[str, object]]:
    """The host's GPUs as nvidia-smi reports them; else those ``declared`` (index -> MiB, ``runhost --gpu``),
    marked as declared: a host whose driver tools are missing or hidden from the agent still says what it has."""
    found: list[dict[str, object]] = [{"index": gpu.index, "uuid": gpu.uuid, "total_mib": gpu.total_mib}
                                      for gpu in gpus()]
    if found or not declared:
        return found
    return [{"index": index, "uuid": "", "total_mib": mib, "declared": True} for index, mib in declared.items()]


def beat(client: redis.Redis, name: str, started: float, found_gpus: list[dict[str, object]]) -> None:
    """One heartbeat: the Redis key the front door reads, expiring after ``HEARTBEAT_MISSES`` periods."""
    period = settings.ANVIL_HOST_HEARTBEAT
    client.set(heartbeat_key(name), json.dumps({"at": time.time(), "pid": os.getpid(), "machine": socket.gethostname(),
                                                "started": started, "gpus": found_gpus}),
               px=int(period * HEARTBEAT_MISSES * 1000))


def write_row(name: str, started: float, found_gpus: list[dict[str, object]]) -> None:
    """The host's row, what people read (the admin, the console): every ``ROW_SECONDS``, not every beat."""
    Host.objects.update_or_create(name=name, defaults={"gpus": found_gpus, "pid": os.getpid(),
                                                       "last_heartbeat": timezone.now(),
                                                       "started_at": timezone.datetime.fromtimestamp(
                                                           started, tz=timezone.get_current_timezone())})


class HostTaken(Exception):
    """Another agent of the same name is alive: two would take each other's tasks."""


def take_over(name: str, client: redis.Redis) -> int:
    """Before an agent consumes ``host.<name>``: wait until a previous agent's beat lapses (a killed agent's lasts
    ``HEARTBEAT_MISSES`` periods), raise ``HostTaken`` when it does not, then requeue what that agent had taken
    and never acknowledged. Returns how many tasks were put back."""
    deadline = time.monotonic() + settings.ANVIL_HOST_HEARTBEAT * (HEARTBEAT_MISSES + 1)
    while (last := client.get(heartbeat_key(name))) is not None:
        if time.monotonic() > deadline:
            found = json.loads(last)
            raise HostTaken(f"an agent for host {name} still beats (pid {found.get('pid')} on "
                            f"{found.get('machine', 'an unnamed machine')}): stop it first")
        time.sleep(min(0.2, settings.ANVIL_HOST_HEARTBEAT))
    return requeue_unacknowledged(f"host.{name}")


def requeue_unacknowledged(queue: str) -> int:
    """Put the tasks taken from ``queue`` and never acknowledged back at its head (kombu's Redis transport keeps
    them in its ``unacked`` hash until the visibility timeout). Only for a queue whose consumers are all gone."""
    from anvil_site.celery import app  # the Celery app imports every task module: at call time

    restored = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        if not hasattr(channel, "unacked_key"):  # not the Redis transport: the broker redelivers on its own
            return 0
        for tag, raw in list(channel.client.hscan_iter(channel.unacked_key)):
            try:
                _payload, _exchange, routing_key = json.loads(raw)
            except ValueError:
                continue
            if routing_key == queue:
                channel.qos.restore_by_tag(tag, client=channel.client, leftmost=True)
                restored += 1
    if restored:
        log.warning("host queue %s: put back %d task(s) a previous agent took and never finished", queue, restored)
    return restored


def start_heartbeats(name: str, declared_gpus: dict[str, int] | None = None) -> threading.Event:
    """Beat from one daemon thread, and write the row and watch this host's engines from another, until the
    returned event is set (the agent's worker runs on the main thread). Apart, because a slow database (SQLite
    under the agent's own load task waits up to 20 s for its lock) must never delay a beat: three late beats
    and the front door counts the host silent, and another agent of its name may take its queue over."""
    stop = threading.Event()
    started, found = time.time(), reported_gpus(declared_gpus)

    def beats() -> None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                      socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        while not stop.is_set():
            try:
                beat(client, name, started, found)
            except Exception as exc:  # Redis away: beat again next period, say it once a period
                log.warning("host %s: heartbeat failed (%s: %s)", name, type(exc).__name__, exc)
            stop.wait(settings.ANVIL_HOST_HEARTBEAT)
        client.delete(heartbeat_key(name))  # a clean stop: silent at once, not after the misses

    def rows_and_watch() -> None:
        from serves.loading import watch  # serves.loading reaches this module through the catalog: at call time

        row_written = float("-inf")
        while not stop.is_set():
            try:
                if time.monotonic() - row_written >= ROW_SECONDS:
                    write_row(name, started, found)
                    row_written = time.monotonic()
                watch(f"process watch on host {name}", host=name)  # its own processes: only this host sees them
            except Exception as exc:  # the database away: try again next period
                log.warning("host %s: watch failed (%s: %s)", name, type(exc).__name__, exc)
            finally:
                close_old_connections()
            stop.wait(settings.ANVIL_HOST_HEARTBEAT)

    threading.Thread(target=beats, name=f"heartbeat-{name}", daemon=True).start()
    threading.Thread(target=rows_and_watch, name=f"watch-{name}", daemon=True).start()
    return stop


def live_hosts(client: redis.Redis, names: Iterable[str]) -> set[str]:
    """Which of ``names`` beat within the last HEARTBEAT_MISSES periods (one round trip)."""
    names = sorted(set(names))
    if not names:
        return set()
    found = client.mget([heartbeat_key(name) for name in names])
    return {name for name, value in zip(names, found, strict=True) if value is not None}


class HostWatch:
    """A web process's view of which hosts beat, refreshed in the background every ``CHECK_SECONDS`` (never on a
    request's time). A host not yet checked counts as alive: a request is never refused on a guess."""

    CHECK_SECONDS = 1.0

    def __init__(self) -> None:
        self.silent_hosts: set[str] = set()
        self.checked_at = float("-inf")
        self.task: asyncio.Task[None] | None = None
        self.client: redis.asyncio.Redis | None = None

    def silent(self, names: Iterable[str]) -> set[str]:
        names = set(names)
        now = time.monotonic()
        if now - self.checked_at >= self.CHECK_SECONDS and (self.task is None or self.task.done()):
            self.checked_at = now
            self.task = asyncio.ensure_future(self._refresh(sorted(names)))
        return self.silent_hosts & names

    async def _refresh(self, names: list[str]) -> None:
        try:
            if self.client is None:
                self.client = redis.asyncio.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                                     socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
            found = await self.client.mget([heartbeat_key(name) for name in names])
        except Exception:  # Redis away: the last view stands (the breakers see a dead serve anyway)
            log.debug("host heartbeats unavailable from Redis", exc_info=True)
            return
        self.silent_hosts = {name for name, value in zip(names, found, strict=True) if value is None}


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HostWatch] = weakref.WeakKeyDictionary()


def host_watch() -> HostWatch:
    loop = asyncio.get_running_loop()
    found = _watches.get(loop)
    if found is None:
        found = _watches[loop] = HostWatch()
    return found
