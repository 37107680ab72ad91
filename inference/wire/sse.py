"""Server-sent events: an incremental decoder that keeps each event whole, and an encoder.

Upstream reads arrive in arbitrary pieces: one read may hold half an event or
three. The decoder cuts the byte stream at event boundaries (a blank line) so
the relay can forward every event as its own chunk, never merged with the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_EVENT_BYTES = 8 * 1024 * 1024  # one event larger than this is a broken upstream, not a big answer


@dataclass(frozen=True)
class SSEEvent:
    raw: bytes  # the event exactly as received, including its terminating blank line
    event: str | None
    data: str

    def json(self) -> object:
        return json.loads(self.data)


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events = []
        while True:
            end, width = _boundary(self._buffer)
            if end < 0:
                break
            raw, self._buffer = self._buffer[: end + width], self._buffer[end + width :]
            event = _parse(raw)
            if event is not None:
                events.append(event)
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise ValueError(f"an SSE event exceeded {MAX_EVENT_BYTES} bytes without ending")
        return events

    def close(self) -> SSEEvent | None:
        """An unterminated last event (an upstream that closed without the blank line)."""
        rest, self._buffer = self._buffer, b""
        return _parse(rest + b"\n\n") if rest.strip() else None


def _boundary(buffer: bytes) -> tuple[int, int]:
    best, width = -1, 0
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        index = buffer.find(separator)
        if index >= 0 and (best < 0 or index < best):
            best, width = index, len(separator)
    return best, width


def _parse(raw: bytes) -> SSEEvent | None:
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if name is None and not data:
        return None  # a comment or keep-alive
    return SSEEvent(raw, name, "\n".join(data))


def encode(payload: object, event: str | None = None) -> bytes:
    """One SSE event with a JSON payload (or a raw string such as ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()
