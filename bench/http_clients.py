"""httpx against aiohttp on the relay's own work, to choose the relay's upstream client.

    .venv/bin/python bench/http_clients.py

Both clients, each with one pooled session, do what inference/upstream_client.py does against the same
scripted upstream: POST a JSON body and hand the response on as it arrives (non-streaming:
read it whole; streaming: iterate the bytes as they come). Reported: non-streaming latency
p50/p99 at concurrency 1, requests/s at concurrency 32, streaming time-to-first-byte p50.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, stop_group  # noqa: E402

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_aiohttp(url: str, n: int, seconds: float) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async def whole() -> float:
            started = time.perf_counter()
            async with session.post(url, json=BODY) as response:
                async for _ in response.content.iter_any():
                    pass
            return time.perf_counter() - started

        async def first_byte() -> float:
            started = time.perf_counter()
            async with session.post(url, json={**BODY, "stream": True}) as response:
                async for _ in response.content.iter_any():
                    return time.perf_counter() - started
            return time.perf_counter() - started

        return await measure(whole, first_byte, n, seconds)


async def run_httpx(url: str, n: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def whole() -> float:
            started = time.perf_counter()
            async with client.stream("POST", url, json=BODY) as response:
                async for _ in response.aiter_raw():
                    pass
            return time.perf_counter() - started

        async def first_byte() -> float:
            started = time.perf_counter()
            async with client.stream("POST", url, json={**BODY, "stream": True}) as response:
                async for _ in response.aiter_raw():
                    return time.perf_counter() - started
            return time.perf_counter() - started

        return await measure(whole, first_byte, n, seconds)


async def measure(whole, first_byte, n: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(100):
        await whole()
    latencies = [await whole() for _ in range(n)]
    ttfb = [await first_byte() for _ in range(max(20, n // 20))]
    done, stop_at = 0, time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await whole()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(32)))
    return {"p50": pct(latencies, 50) * 1000, "p99": pct(latencies, 99) * 1000,
            "rps": done / (time.perf_counter() - started), "ttfb": pct(ttfb, 50) * 1000}


def main() -> None:
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "tests/support/scripted_upstream.py"), "--port", str(port),
                                 "--deltas", "16", "--delay-ms", "1"], start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        results = {"aiohttp": asyncio.run(run_aiohttp(url, 1000, 8)), "httpx": asyncio.run(run_httpx(url, 1000, 8))}
    finally:
        stop_group(upstream)
    print("| client | latency p50 c=1 | latency p99 c=1 | requests/s c=32 | stream first byte p50 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['p50']:.3f} ms | {r['p99']:.3f} ms | {r['rps']:.0f} | {r['ttfb']:.3f} ms |")
    a, h = results["aiohttp"], results["httpx"]
    print(f"\naiohttp/httpx: {h['p50'] / a['p50']:.2f}x lower p50 latency, {a['rps'] / h['rps']:.2f}x the requests/s")


if __name__ == "__main__":
    main()
