"""Load generation and the serving metrics, as ``vllm bench serve`` defines them.

Per request, streamed: TTFT is the time from sending to the first content token; E2EL from
sending to the last; ITL every gap between successive content chunks; TPOT (E2EL - TTFT) / (output
tokens - 1). Per level: request throughput is completed requests over the level's duration (first
send to last completion), output throughput is output tokens over the same. Requests go out at a
fixed concurrency (a closed loop), at a Poisson rate (an open loop: arrivals do not wait), or at
recorded times (a replayed request file: each request leaves at its offset from the first).

Runs on its own event loop in its own thread (``run_level``), so the runner's thread stays free to
report progress and to notice a cancellation, which stops the level's requests at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Each streamed request may run long (a slow model, many tokens); a silent connection is given up on.
READ_TIMEOUT = 120.0
CONNECT_TIMEOUT = 5.0


@dataclass
class RequestRecord:
    ok: bool = False
    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    finish_reason: str = ""
    text: str = ""
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2el is None or self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Level:
    label: str
    requests: int
    concurrency: int | None = None
    rate: float | None = None  # requests per second, Poisson
    offsets: tuple[float, ...] | None = None  # a replay at its recorded pace: each request's send time, seconds


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
               ) -> RequestRecord:
    record = RequestRecord()
    started = time.perf_counter()
    last = started
    chunks = 0
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status >= 400:
                record.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return record
            buffer = b""
            async for data in response.content.iter_any():
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            continue
                        chunk = json.loads(payload)
                        usage = chunk.get("usage")
                        if usage:
                            record.output_tokens = int(usage.get("completion_tokens") or 0)
                        for choice in chunk.get("choices") or []:
                            delta = choice.get("delta") or {}
                            text = delta.get("content") or choice.get("text") or ""
                            if text or delta.get("tool_calls"):
                                now = time.perf_counter()
                                if record.ttft is None:
                                    record.ttft = now - started
                                else:
                                    record.itl.append(now - last)
                                last = now
                                chunks += 1
                                record.text += text
                            if choice.get("finish_reason"):
                                record.finish_reason = choice["finish_reason"]
        record.e2el = last - started if record.ttft is not None else time.perf_counter() - started
        record.output_tokens = record.output_tokens or chunks  # no usage reported: one token per chunk
        record.ok = True
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record


async def _until(deadline: float, stop: threading.Event) -> None:
    """Sleep until ``deadline`` (perf_counter), waking to notice ``stop``: a recording may pause for minutes."""
    while not stop.is_set():
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.2))


async def _level(url: str, body: dict[str, Any], headers: dict[str, str], level: Level, seed: int,
                 stop: threading.Event, on_done: Callable[[RequestRecord], None],
                 requests: Sequence[tuple[str, dict[str, Any]]] | None = None) -> tuple[list[RequestRecord], float]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=0)
    records: list[RequestRecord] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        gate = asyncio.Semaphore(level.concurrency) if level.concurrency else None

        async def send(index: int) -> None:
            where, payload = requests[index % len(requests)] if requests else (url, body)
            if gate is not None:
                async with gate:
                    record = await _one(session, where, payload, headers)
            else:
                record = await _one(session, where, payload, headers)
            records.append(record)
            on_done(record)

        started = time.perf_counter()
        rng = random.Random(seed)
        tasks = []
        for index in range(level.requests):
            if level.offsets is not None:
                await _until(started + level.offsets[index % len(level.offsets)], stop)
            elif level.rate:
                await asyncio.sleep(rng.expovariate(level.rate))
            if stop.is_set():
                break
            tasks.append(asyncio.ensure_future(send(index)))
        pending = set(tasks)
        while pending and not stop.is_set():
            _, pending = await asyncio.wait(pending, timeout=0.2)
        for task in pending:  # cancelled: stop what is in flight (closing the connection aborts it upstream)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return records, time.perf_counter() - started


def run_level(url: str, body: dict[str, Any], headers: dict[str, str], level: Level, *, seed: int,
              stop: threading.Event, on_done: Callable[[RequestRecord], None],
              requests: Sequence[tuple[str, dict[str, Any]]] | None = None) -> tuple[list[RequestRecord], float]:
    """Drive one level to its end (or until ``stop`` is set) on a fresh event loop in this thread.

    ``requests``: (URL, body) pairs sent in turn (a replay) instead of ``url`` and ``body`` every time."""
    return asyncio.run(_level(url, body, headers, level, seed, stop, on_done, requests))


def distribution(values: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99 in milliseconds (nearest-rank percentiles); empty when there are no values."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]

    return {"mean": round(1000 * statistics.fmean(ordered), 3), "p50": round(1000 * rank(50), 3),
            "p90": round(1000 * rank(90), 3), "p99": round(1000 * rank(99), 3)}


def summarize(level: Level, records: list[RequestRecord], duration: float) -> dict[str, Any]:
    done = [r for r in records if r.ok]
    tokens = sum(r.output_tokens for r in done)
    return {
        "label": level.label, "concurrency": level.concurrency, "rate": level.rate,
        **({"replayed_at_recorded_pace": True} if level.offsets is not None else {}), "requests": len(records),
        "completed": len(done), "failed": len(records) - len(done), "duration_s": round(duration, 4),
        "request_throughput": round(len(done) / duration, 4) if duration > 0 else 0.0,
        "output_throughput": round(tokens / duration, 4) if duration > 0 else 0.0,
        "output_tokens": tokens,
        "ttft_ms": distribution([r.ttft for r in done if r.ttft is not None]),
        "tpot_ms": distribution([t for r in done if (t := r.tpot) is not None]),
        "itl_ms": distribution([gap for r in done for gap in r.itl]),
        "e2el_ms": distribution([r.e2el for r in done if r.e2el is not None]),
    }
