"""`manage.py runweb`: the web process alone, as the launcher starts it, under either server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.processes import child_env, free_port, manage, running
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(("server", "program"), [("uvicorn", "uvicorn"), ("daphne", "anvil_site.webserver")])
def test_runweb_becomes_the_chosen_server_and_stops_cleanly_on_sigterm(tmp_path: Path, server: str,
                                                                      program: str) -> None:
    port = free_port()
    log = tmp_path / "web.log"
    with running(manage("runweb", "--port", str(port)), child_env(ANVIL_WEB_SERVER=server), log) as process:
        wait_for(lambda: process.poll() is None and answers(f"http://127.0.0.1:{port}/readyz"), 60,
                 f"Anvil under {server} to be ready")
        # The command became the server (exec), so a container's stop signal reaches the server itself.
        assert program in psutil.Process(process.pid).cmdline()
        os.kill(process.pid, signal.SIGTERM)
        # uvicorn raises the signal again once it has shut down (so its status tells how it stopped); Daphne exits 0.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
    output = log.read_text()
    assert "Traceback" not in output and "ERROR" not in output, output  # uvicorn's lifespan stop included
