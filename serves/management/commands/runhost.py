"""python manage.py runhost NAME: this machine's host agent.

A Celery worker consuming the queue ``host.NAME`` (the lifecycle work of the serves whose ``host`` is NAME:
loads, unloads, compose operations) with concurrency 1 and prefetch 1, so one lifecycle operation runs at a
time on a host, and heartbeats to Redis (``serves/hosts.py``). Before it consumes, it takes the queue over from
a previous agent of the same name (``take_over``: what a killed agent held comes back at once). Stop it with
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from anvil_site.celery import app
from serves.hosts import HostTaken, start_heartbeats, take_over
from serves.models import validate_host_name


class Command(BaseCommand):
    help = "Run this machine's host agent: the worker for the serves whose host is NAME, and its heartbeats."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The host's name, as serves name it in their host field.")
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--gpu", action="append", default=[], metavar="INDEX=MIB",
                            help="A GPU this host has, reported when nvidia-smi reports none (repeatable), "
                            "e.g. --gpu 0=81920.")
        parser.add_argument("--metrics-port", type=int, default=0,
                            help="Serve this process's Prometheus metrics on this port (compose/prometheus.yml).")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        try:
            validate_host_name(name)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        declared = _declared_gpus(options["gpu"])
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=settings.ANVIL_REDIS_TIMEOUT,
                                      socket_connect_timeout=settings.ANVIL_REDIS_TIMEOUT)
        try:
            take_over(name, client)
        except HostTaken as exc:
            raise CommandError(str(exc)) from None
        finally:
            client.close()
        if options["metrics_port"]:
            start_http_server(options["metrics_port"])
        stop = start_heartbeats(name, declared)
        self.stderr.write(f"host agent {name}: consuming host.{name}, beating to Redis")
        try:
            app.worker_main(["worker", "--queues", f"host.{name}", "--concurrency", "1", "--prefetch-multiplier",
                             "1", "--hostname", f"{name}@{socket.gethostname()}", "--loglevel", options["loglevel"],
                             "--without-mingle", "--without-gossip"])
        finally:
            stop.set()


def _declared_gpus(values: list[str]) -> dict[str, int]:
    declared = {}
    for value in values:
        index, _, mib = value.partition("=")
        if not index.strip() or not mib.strip().isdigit():
            raise CommandError(f"--gpu {value!r}: write INDEX=MIB, e.g. --gpu 0=81920")
        declared[index.strip()] = int(mib)
    return declared
