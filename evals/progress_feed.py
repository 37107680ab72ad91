"""Live run progress for the console: runs publish to a channel-layer group, pages listen over /ws/evals/.

The publisher is a progress listener (``evals.runs.ProgressListener``) that the
Celery task and ``manage.py runeval`` hand to ``execute_run``. It sends only the
progress that was just written to the run's row (``Progress.persisted``), so a
page that reloads shows what the socket showed, and a fast runner does not
flood Redis. A run must never fail or wait because nobody can be told about
it: a publish is bounded by ``PUBLISH_TIMEOUT``, a failure is logged once per
run, and after one the publisher stays quiet for ``BACKOFF_SECONDS`` (the run's
final status is always tried: it is what a page waits for).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from evals.models import EvalRun
from evals.runs import Progress

log = logging.getLogger(__name__)

PROGRESS_GROUP = "evals.progress"
# The group message type; Channels calls the consumer's ``eval_progress`` method for it.
PROGRESS_EVENT = "eval.progress"
# A publish that takes longer than this is a Redis in trouble: give up on it rather than hold up the run.
PUBLISH_TIMEOUT = 2.0
BACKOFF_SECONDS = 30.0
# A page asks for the state of the runs it shows; more than a page's worth is not a page asking.
MAX_WATCHED = 200


def progress_message(progress: Progress) -> dict[str, Any]:
    """What a page receives: the same shape for a live update and for a snapshot of a row.

    A finished run's message carries its final status and gate together (both written in one
    UPDATE), so a page never shows a finished run with a status or gate it does not end with.
    """
    finished = progress.status in EvalRun.FINISHED
    return {"type": "progress", "run": progress.run_id, "kind": progress.kind, "status": progress.status,
            "status_label": progress.status.replace("_", " "),
            "done": progress.done, "total": progress.total, "note": progress.note,
            "percent": _percent(progress.done, progress.total, progress.status),
            "finished": finished, "gate": gate_word(progress.gate_passed, finished)}


def gate_word(gate_passed: bool | None, finished: bool) -> str:
    """How a page names a run's gate: passed, failed, none (the run has no gate) or pending."""
    if gate_passed is not None:
        return "passed" if gate_passed else "failed"
    return "none" if finished else "pending"


def progress_percent(run: EvalRun) -> int:
    """How far a stored run got, as the bar on a page shows it."""
    return _percent(run.progress_done, run.progress_total, run.status)


def _percent(done: int, total: int, status: str) -> int:
    if total:
        return min(100, round(100 * done / total))
    # A run that ran to its end with no cases is complete; one that failed before counting them is not.
    return 100 if status in EvalRun.COMPLETED else 0


def snapshot(run_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The stored progress of these runs (what a page missed before its socket opened)."""
    ids = sorted({int(pk) for pk in run_ids})[:MAX_WATCHED]
    rows = EvalRun.objects.filter(pk__in=ids).values_list("pk", "kind", "status", "progress_done",
                                                          "progress_total", "progress_note", "gate_passed")
    return [progress_message(Progress(pk, kind, status, done, total, note, True, gate))
            for pk, kind, status, done, total, note, gate in rows]


class ProgressPublisher:
    """A progress listener that publishes each run's persisted progress to ``PROGRESS_GROUP``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, layer: Any = None) -> None:
        self._clock = clock
        self._layer = layer  # None: the project's default channel layer, looked up when publishing
        self._quiet_until = float("-inf")
        self._warned = False

    def __call__(self, progress: Progress) -> None:
        if not progress.persisted:
            return
        final = progress.status in EvalRun.FINISHED
        if not final and self._clock() < self._quiet_until:
            return
        try:
            _publish(self._layer or get_channel_layer(), progress_message(progress))
        except Exception as exc:
            self._quiet_until = self._clock() + BACKOFF_SECONDS
            if not self._warned:
                self._warned = True
                log.warning("live progress of eval run %s is not published (%s: %s); the run goes on",
                            progress.run_id, type(exc).__name__, exc)


def _publish(layer: Any, message: dict[str, Any]) -> None:
    if layer is None:  # no channel layer configured: nobody could be listening
        return

    async def send() -> None:
        await asyncio.wait_for(layer.group_send(PROGRESS_GROUP, {"type": PROGRESS_EVENT, "progress": message}),
                               PUBLISH_TIMEOUT)

    async_to_sync(send)()
