from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from anvil_site.launcher import embedded_redis_spec, redis_answers
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


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def module_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs of the real processes a test module shares (upstreams, Anvil under Daphne)."""
    return tmp_path_factory.mktemp("logs")
