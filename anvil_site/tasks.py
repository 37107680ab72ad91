"""Tasks of the site itself."""

from __future__ import annotations

import os
import socket

from celery import shared_task


@shared_task(name="anvil.ping", time_limit=10, soft_time_limit=5)
def ping(token: str) -> dict[str, object]:
    """Echo ``token`` with the answering worker's host and pid: proves a worker is alive."""
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid()}
