"""Claims: one lifecycle operation (up, down, status, load, unload) at a time per serve.

A claim is a conditional UPDATE of the serve's ``busy_token``; it lapses after ``CLAIM_LEASE``, and a
claim whose process died on this host (a SIGKILLed worker: the token names host and pid) is taken over
at once by the redelivered task. ``OperationResult`` is what every operation reports.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from serves.models import Serve, ServeEvent

log = logging.getLogger(__name__)

# A claim older than this belongs to a worker that died mid-operation.
CLAIM_LEASE = timedelta(minutes=30)

Outcome = ServeEvent.Outcome


@dataclass(frozen=True)
class OperationResult:
    serve: str
    action: str
    outcome: str
    detail: str
    commands: list[list[str]]
    state_before: str = ""
    state_after: str = ""
    output_tail: str = ""
    event_id: int | None = None


def claim(serve_id: int, action: str) -> str | None:
    """Take the serve for one operation; None when another operation holds it.

    A plain ``update``: the claim is not what the serve catalog shows, so it must not bump
    ``updated_at`` (state writes go through ``write_state``, which does).
    """
    # host:pid:nonce — a claim whose process died on this host (a SIGKILLed worker) can be taken over
    # at once by the redelivered task, instead of waiting out CLAIM_LEASE.
    token = f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:16]}"
    now = timezone.now()
    taken = (
        Serve.objects.filter(pk=serve_id)
        .filter(Q(busy_token="") | Q(busy_since__lt=now - CLAIM_LEASE))
        .update(busy_token=token, busy_since=now, busy_action=action)
    )
    if taken:
        return token
    held = Serve.objects.filter(pk=serve_id).values_list("busy_token", flat=True).first()
    if held and _holder_died(held):
        taken = Serve.objects.filter(pk=serve_id, busy_token=held).update(busy_token=token, busy_since=now,
                                                                          busy_action=action)
        if taken:
            log.warning("took over serve %s's %s claim from a process that died (%s)", serve_id, action, held)
            return token
    return None


def _host() -> str:
    return socket.gethostname()[:32]  # busy_token is 64 characters


def _holder_died(token: str) -> bool:
    host, _, rest = token.partition(":")
    pid = rest.partition(":")[0]
    if host != _host() or not pid.isdigit():
        return False  # another host's claim (or an old token): only its lease can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def release(serve_id: int, token: str) -> None:
    Serve.objects.filter(pk=serve_id, busy_token=token).update(busy_token="", busy_since=None, busy_action="")
