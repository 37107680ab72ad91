"""Real processes on loopback for end-to-end tests: Anvil under its web server, and scripted upstreams."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings

from anvil_site.launcher import web_argv
from tests.support.processes import ROOT, child_env, free_port, running
from tests.support.waiting import wait_for

SCRIPTED_UPSTREAM = ROOT / "tests" / "support" / "scripted_upstream.py"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def scripted_upstream(log_dir: Path, deltas: int = 8, delay_ms: float = 5,
                      force_scenario: str | None = None) -> Iterator[str]:
    """Yields the upstream's root URL (its API is under /v1)."""
    port = free_port()
    argv = [sys.executable, str(SCRIPTED_UPSTREAM), "--port", str(port), "--deltas", str(deltas),
            "--delay-ms", str(delay_ms)]
    if force_scenario:
        argv += ["--force-scenario", force_scenario]
    with running(argv, child_env(), log_dir / f"upstream-{port}.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: process.poll() is None and _answers(f"{url}/health"), 30, "the scripted upstream")
        yield url


@contextmanager
def live_anvil(log_dir: Path, server: str | None = None, **env: str) -> Iterator[str]:
    """Anvil's web process against the test database, started as the launcher starts it, under
    ``server`` (uvicorn or daphne; ANVIL_WEB_SERVER's by default); yields its root URL."""
    server = server or settings.ANVIL_WEB_SERVER
    port = free_port()
    argv = web_argv(server, "127.0.0.1", port)
    environment = child_env(**env)
    log = log_dir / f"anvil-{port}.log"
    with running(argv, environment, log) as process:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return _answers(f"{url}/readyz")

        wait_for(ready, 60, f"Anvil under {server} to be ready")
        yield url


def until_routed(anvil: str, key: str, expected: dict[str, str], timeout: float = 10, prompt: str = "hi") -> None:
    """Wait until Anvil's web process (which refreshes serves and profile in the background) routes
    each named serve with the expected verdict when pinned (``prompt`` picks the work class)."""

    def routed() -> bool:
        for serve, verdict in expected.items():
            decision = httpx.post(f"{anvil}/v1/route", headers={"x-api-key": key}, timeout=5, json={
                "model": serve, "messages": [{"role": "user", "content": prompt}]}).json()
            first = (decision.get("candidates") or [{}])[0]
            if (first.get("serve"), first.get("verdict")) != (serve, verdict):
                return False
        return True

    wait_for(routed, timeout, f"Anvil to route {expected}")


DEMO_CHECKPOINT = ROOT / "models" / "hrm-demo"


@contextmanager
def hrm_worker(log_dir: Path, name: str = "hrm-demo", checkpoint: Path = DEMO_CHECKPOINT,
               extra: tuple[str, ...] = ()) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``manage.py runinference`` on a checkpoint (an HRM or a transformers directory); yields
    (port, process) once /readyz says ready."""
    port = free_port()
    argv = [sys.executable, str(ROOT / "manage.py"), "runinference", "--checkpoint", str(checkpoint), "--port",
            str(port), "--served-model-name", name, *extra]
    log = log_dir / f"hrm-{port}.log"
    with running(argv, child_env(), log) as process:
        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return _answers(f"http://127.0.0.1:{port}/readyz")

        wait_for(ready, 90, f"the {name} worker to be ready")
        yield port, process
