from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from anvil_site.launcher import embedded_redis_spec, redis_answers
from anvil_site.snapshots import invalidate_all
from tests.support.browser import browser  # noqa: F401  (a fixture, for every test package)
from tests.support.waiting import wait_for


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: REDIS_URL's when set (CI), else an embedded one at the socket settings expect."""
    url = settings.REDIS_URL
    if not settings.REDIS_URL_IS_EMBEDDED:
        if not redis_answers(url):
            raise RuntimeError(f"REDIS_URL is set but Redis does not answer at {url}")
        yield url
        return
    socket_path = Path(settings.EMBEDDED_REDIS_SOCKET)
    if redis_answers(url):  # left by an earlier run that was killed: reuse it
        yield url
        return
    socket_path.unlink(missing_ok=True)
    work = tmp_path_factory.mktemp("redis")
    spec = embedded_redis_spec(socket_path, work)  # the same server the launcher runs
    process = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis_answers(url), 15, "the embedded test Redis")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        socket_path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_engine_outlives_the_suite() -> Iterator[None]:
    """Process serves belong to the host, not to a test: a test that fails mid-load would leave its engine
    running (a vLLM holds gigabytes) into the next run. At the end, stop every keeper under this suite's
    var directory, whole process groups, and say which were left."""
    yield
    import os
    import signal

    import psutil

    root = str(Path(settings.VAR_DIR) / "serves")
    left = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(part.endswith("process_keeper.py") for part in cmdline) and any(part.startswith(root)
                                                                                for part in cmdline):
            left.append(process)
    for process in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(left, timeout=15)
    for process in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    if left:
        names = [process.info["cmdline"][process.info["cmdline"].index("--serve") + 1] for process in left
                 if "--serve" in process.info["cmdline"]]
        print(f"\nstopped {len(left)} process serve(s) a test left running: {', '.join(names)}")


@pytest.fixture(autouse=True)
def fresh_snapshots() -> Iterator[None]:
    """Each test's database starts empty, so no in-process snapshot may answer with the last test's rows
    (a serve a previous test created would be routed to within the sync interval)."""
    yield
    invalidate_all()


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def module_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs of the real processes a test module shares (upstreams, Anvil under Daphne)."""
    return tmp_path_factory.mktemp("logs")
