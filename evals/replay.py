"""A recorded request file for ``runeval benchmark --replay FILE``: JSONL, one request body a line.

Each line is an OpenAI request body, as a client sent it (an operator exports it from their own
traffic): chat completions (``messages``) or completions (``prompt``). ``model`` is replaced by the
target's and the request is streamed with usage, so TTFT, ITL and tokens are measured. A line may
say when it was sent, in ``ts`` or ``at``: seconds (a Unix time, or any clock) or an ISO 8601
time; those fields are not sent. With a time on every line, the requests go out at their recorded
pace (the earliest at once, in time order); with none, at a chosen ``--rate`` or ``--concurrency``.
Blank lines and lines that start with ``#`` are skipped.

The file is read where the run runs. Only its path is kept with the run (and its digest and size
in the summary): its bodies are someone's traffic, and Anvil keeps no prompt text at rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from evals.errors import BadParameters

MAX_BYTES = 256 * 1024 * 1024  # a day of a busy serve's requests; more is a job for several runs
MAX_LINES = 100_000
TIME_FIELDS = ("ts", "at")
ENDPOINTS = {"messages": "/chat/completions", "prompt": "/completions"}


@dataclass(frozen=True)
class Replay:
    path: str
    requests: tuple[tuple[str, dict[str, Any]], ...]  # (endpoint path under the base URL, body), in send order
    offsets: tuple[float, ...] | None  # seconds from the first request, per request; None: no recorded times
    sha256: str
    size: int

    @property
    def recorded_span(self) -> float:
        return self.offsets[-1] if self.offsets else 0.0


def _when(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise BadParameters(f"{where}: a time is seconds or an ISO 8601 time, not {value!r}")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BadParameters(f"{where}: a time is a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    raise BadParameters(f"{where}: a time is seconds or an ISO 8601 time (2026-01-31T12:00:00Z)")


def load_replay(path: str | Path) -> Replay:
    """Read and check a replay file; every refusal names the line."""
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise BadParameters(f"replay file {file}: cannot be read ({exc.strerror or exc})") from None
    if size > MAX_BYTES:
        raise BadParameters(f"replay file {file}: {size} bytes, more than {MAX_BYTES}")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise BadParameters(f"replay file {file}: cannot be read ({exc.strerror or exc})") from None
    lines: list[tuple[float | None, int, str, dict[str, Any]]] = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"replay file {file.name}, line {number}"
        if len(lines) >= MAX_LINES:
            raise BadParameters(f"{where}: more than {MAX_LINES} requests")
        try:
            body = json.loads(line)
        except ValueError:
            raise BadParameters(f"{where}: not a JSON object") from None
        if not isinstance(body, dict):
            raise BadParameters(f"{where}: not a JSON object")
        kind = next((name for name in ENDPOINTS if name in body), None)
        if kind is None or (kind == "messages" and not isinstance(body["messages"], list)):
            raise BadParameters(f"{where}: an OpenAI chat completions body (messages) or completions body (prompt)")
        times = [name for name in TIME_FIELDS if name in body]
        when = _when(body[times[0]], where) if times else None
        sent = {key: value for key, value in body.items() if key not in TIME_FIELDS}
        lines.append((when, number, ENDPOINTS[kind], sent))
    if not lines:
        raise BadParameters(f"replay file {file}: no requests")
    timed = [line for line in lines if line[0] is not None]
    if timed and len(timed) != len(lines):
        first = next(line for line in lines if line[0] is None)
        raise BadParameters(f"replay file {file.name}, line {first[1]}: no ts or at, where other lines have one "
                            "(give every line a time, or none)")
    offsets = None
    if timed:
        lines.sort(key=lambda line: (line[0], line[1]))
        start = lines[0][0] or 0.0
        offsets = tuple(round((line[0] or 0.0) - start, 6) for line in lines)
    return Replay(str(file), tuple((line[2], line[3]) for line in lines), offsets,
                  hashlib.sha256(raw).hexdigest(), size)
