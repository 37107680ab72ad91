"""A real Celery worker process against the test database and the test Redis."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anvil_site.celery import app
from tests.support.processes import child_env, running
from tests.support.waiting import wait_for


@contextmanager
def celery_worker(log_dir: Path, concurrency: int = 1) -> Iterator[None]:
    name = f"test-{id(log_dir)}@localhost"
    argv = [sys.executable, "-m", "celery", "-A", "anvil_site", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--hostname", name, "--without-mingle", "--without-gossip"]
    log = log_dir / "worker.log"
    with running(argv, child_env(), log) as process:
        def answers() -> bool:
            assert process.poll() is None, f"the worker exited: {log.read_text()[-2000:]}"
            replies = app.control.ping(destination=[name], timeout=0.5)
            return any(name in reply for reply in replies)

        wait_for(answers, 60, "the Celery worker to answer a ping")
        yield
