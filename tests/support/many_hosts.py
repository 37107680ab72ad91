"""Several hosts on one machine (tests/deploy): the control host is this machine, GPU hosts are network namespaces.

Host A (the control host, this namespace): a Redis server and a PostgreSQL cluster of the test's own, listening on
loopback and on the veth addresses; two web processes; nginx from Debian's package, with ``compose/nginx.conf``
in front of them; Celery beat and a worker for the default queue; Prometheus from Debian's package with
``compose/prometheus.yml``; an OTLP collector stand-in. Hosts B and C: ``manage.py runhost NAME`` inside a
namespace each, reaching A's Redis and PostgreSQL over the veth link, their engines listening on their own address
(``ANVIL_ENGINE_BIND``). Nothing is shared with the suite's own database or Redis.

The test reads and writes the stack's database through a Django connection alias (``ALIAS``), so it uses the
project's models as any host does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import yaml
from django.db import connections

from anvil_site.environment import _parse_database_url
from tests.support.netns import NETWORK, Namespace, namespaces
from tests.support.nginx import nginx_conf
from tests.support.otlp import Collector, collector
from tests.support.private_postgres import private_postgres
from tests.support.processes import ROOT, free_port, stop_group
from tests.support.waiting import wait_for

ALIAS = "hosts"
HEARTBEAT = "0.5"
COMMAND_TIMEOUT = 180


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if found is None:
        raise AssertionError(f"{name} is not installed: `apt-get install {name}` (.ci/run does)")
    return found


@dataclass
class HostsStack:
    work: Path
    logs: Path
    net: dict[str, Namespace]
    database_url: str  # as host A reaches it
    redis_port: int
    otlp: Collector
    key: str = ""  # an API key for the stack's front door
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex * 2)
    web_ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    nginx_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    webs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_files: list[IO[bytes]] = field(default_factory=list)

    @property
    def nginx(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def web(self, index: int) -> str:
        return f"http://127.0.0.1:{self.web_ports[index]}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def env(self, host: str = "a", **extra: str) -> dict[str, str]:
        """A process's environment on ``host``: A reaches Redis and PostgreSQL on loopback, B and C over the veth."""
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("ANVIL_", "DATABASE_", "REDIS_", "OTEL_", "DJANGO_"))}
        database, redis_host = self.database_url, "127.0.0.1"
        if host != "a":
            redis_host = self.net[host].gateway
            database = database.replace("@127.0.0.1:", f"@{redis_host}:")
        env.update(DATABASE_URL=database, REDIS_URL=f"redis://{redis_host}:{self.redis_port}/0",
                   DJANGO_SECRET_KEY=self.secret_key, ANVIL_VAR_DIR=str(self.work / f"host-{host}"),
                   ANVIL_HOST_HEARTBEAT=HEARTBEAT, ANVIL_SERVE_SYNC_INTERVAL="0.2", PYTHONUNBUFFERED="1",
                   DJANGO_SETTINGS_MODULE="anvil_site.settings")
        if host != "a":
            env["ANVIL_ENGINE_BIND"] = self.net[host].address
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the stack)
        self.log_files.append(log)
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=self.env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def start_web(self, index: int) -> None:
        port = self.web_ports[index]
        argv = [sys.executable, str(ROOT / "manage.py"), "runweb", "--host", "127.0.0.1", "--port", str(port)]
        process = self.spawn(f"web{index + 1}", argv, self.env(
            OTEL_EXPORTER_OTLP_ENDPOINT=self.otlp.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_SERVICE_NAME=f"anvil-web{index + 1}"))
        self.webs[index] = process

        def ready() -> bool:
            assert process.poll() is None, (self.logs / f"web{index + 1}.log").read_text()[-3000:]
            return _answers(f"{self.web(index)}/readyz")

        wait_for(ready, 90, f"web node {index + 1} to be ready")

    def kill_web(self, index: int) -> None:
        process = self.webs.pop(index)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def start_agent(self, host: str) -> None:
        port = self.metrics_ports.setdefault(host, free_port())
        argv = self.net[host].argv([sys.executable, str(ROOT / "manage.py"), "runhost", host,
                                    "--metrics-port", str(port)])
        process = self.spawn(f"agent-{host}", argv, self.env(host))
        self.agents[host] = process
        from serves.models import Host

        def beats() -> bool:
            assert process.poll() is None, (self.logs / f"agent-{host}.log").read_text()[-3000:]
            return Host.objects.using(ALIAS).filter(name=host, pid__isnull=False, last_heartbeat__isnull=False,
                                                    started_at__gt=_now_minus(60)).exists() and \
                _answers(f"http://{self.net[host].address}:{port}/metrics")

        wait_for(beats, 90, f"host {host}'s agent to beat")

    def kill_agent(self, host: str) -> None:
        """SIGKILL to the agent's process group: the worker and its pool die, the engines (sessions of their own)
        live on, as when a machine's agent crashes."""
        process = self.agents.pop(host)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def close(self) -> None:
        for process in [*self.webs.values(), *self.agents.values(), *self.others]:
            stop_group(process, timeout=10)
        for log in self.log_files:
            log.close()


def _now_minus(seconds: float) -> object:
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() - timedelta(seconds=seconds)


def _prometheus_conf(stack: HostsStack) -> Path:
    """``compose/prometheus.yml`` as shipped, its targets pointed at this stack's nodes, scraping every second."""
    conf = yaml.safe_load((ROOT / "compose" / "prometheus.yml").read_text())
    conf["global"]["scrape_interval"] = conf["global"]["evaluation_interval"] = "1s"
    targets = {
        "anvil-web": [f"127.0.0.1:{port}" for port in stack.web_ports],
        "anvil-hosts": [f"{stack.net[host].address}:{stack.metrics_ports.setdefault(host, free_port())}"
                        for host in ("b", "c")],
        "engines": [],
    }
    for job in conf["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}] if targets[job["job_name"]] else []
    path = stack.work / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


@contextlib.contextmanager
def hosts_stack(logs: Path) -> Iterator[HostsStack]:
    work = Path(tempfile.mkdtemp(prefix="anvil-hosts-"))
    with contextlib.ExitStack() as exit_stack:
        exit_stack.callback(shutil.rmtree, work, True)
        net = exit_stack.enter_context(namespaces("b", "c"))
        gateways = tuple(found.gateway for found in net.values())
        database = exit_stack.enter_context(private_postgres(logs, also_listen=gateways, trust_network=NETWORK))
        otlp = exit_stack.enter_context(collector())
        redis_port = free_port()
        stack = HostsStack(work, logs, net, database.url, redis_port, otlp)
        exit_stack.callback(stack.close)
        stack.others.append(stack.spawn("redis", [
            _binary("redis-server"), "--port", str(redis_port), "--bind", " ".join(("127.0.0.1", *gateways)),
            "--save", "", "--appendonly", "no", "--protected-mode", "no"], stack.env()))
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True,
                                        timeout=5).stdout.strip() == b"PONG", 30, "the stack's Redis")
        stack.manage("migrate", "--no-input", "-v", "0")
        connections.databases[ALIAS] = {**connections["default"].settings_dict,
                                        **_parse_database_url(database.url), "TEST": {}}
        exit_stack.callback(_forget_alias)
        for index in (0, 1):
            stack.start_web(index)
        stack.others.append(stack.spawn("worker", [
            sys.executable, "-m", "celery", "-A", "anvil_site", "worker", "--loglevel", "INFO", "--concurrency", "1",
            "--hostname", f"worker-a-{uuid.uuid4().hex[:4]}@%h", "--without-mingle", "--without-gossip"],
            stack.env()))
        stack.others.append(stack.spawn("beat", [
            sys.executable, "-m", "celery", "-A", "anvil_site", "beat", "--loglevel", "INFO", "--pidfile", "",
            "--schedule", str(work / "celerybeat-schedule")], stack.env()))
        nginx = nginx_conf(work / "nginx", stack.nginx_port, stack.web_ports, logs / "nginx.log")
        subprocess.run([_binary("nginx"), "-t", "-c", str(nginx)], check=True, capture_output=True, timeout=30)
        stack.others.append(stack.spawn("nginx-master", [_binary("nginx"), "-c", str(nginx), "-g", "daemon off;"],
                                        stack.env()))
        wait_for(lambda: _answers(f"{stack.nginx}/readyz"), 30, "nginx to answer")
        stack.others.append(stack.spawn("prometheus", [
            _binary("prometheus"), f"--config.file={_prometheus_conf(stack)}",
            f"--storage.tsdb.path={work / 'prometheus'}", f"--web.listen-address=127.0.0.1:{stack.prometheus_port}"],
            stack.env()))
        wait_for(lambda: _answers(f"{stack.prometheus}/-/ready"), 60, "Prometheus to be ready")
        for host in ("b", "c"):
            stack.start_agent(host)
        yield stack


def _forget_alias() -> None:
    connections[ALIAS].close()
    del connections.databases[ALIAS]
