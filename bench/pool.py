"""Pool benchmark: swaps on one device, fairness between keys, and what a queue costs when nothing waits.

    .venv/bin/python bench/pool.py                 # everything, prints Markdown tables for bench/RESULTS.md
    .venv/bin/python bench/pool.py --swaps 10 --skip-fairness

Anvil runs as in production (one web process, one Celery worker, an embedded Redis and SQLite). The
engines are real: two llama.cpp servers of the tiny Llama (``make engines``), as on-demand ``process``
serves on a declared device with room for one, so every request for the other model is a swap.

* **Swap time**, from the request for the model not loaded to its first token, with the resident idle,
  against the same work without Anvil measured in the same run: stop one llama.cpp server (SIGTERM, wait
  for its exit), start the other, poll it until it answers, stream its first token. Parts from Anvil's own
  counters: the drain, the load (eviction, stop, start, readiness).
* **Resets under steady load**: ``--swaps`` swaps while a client streams to whichever model is resident;
  every stream must end with ``[DONE]`` and every token (``max_tokens`` reached or a stop): 0 resets,
  0 lost tokens is the goal.
* **Fairness**: 2 and 4 keys flood a serve with ``target_inflight = 1``; Jain's index over the slot-time
  each key got while all were waiting (goal >= 0.95).
* **Queueing overhead when nothing waits**: TTFT through a serve with ``target_inflight`` set and no
  contention, against a serve with no queue in front of the same engine, interleaved (goal <= 0.1 ms p50
  added). A serve with no queue pays nothing new: it never reaches the queue's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import embedded_stack  # noqa: E402
from bench.pool_load import inline  # noqa: E402
from tests.support.engines import built_layout  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

MAX_TOKENS = 16


def manifest(work: Path) -> tuple[Path, dict[str, int]]:
    layout = built_layout()
    ports = {name: free_port() for name in ("swap-a", "swap-b", "queued")}
    args = inline({"python": str(layout.python(layout.llama_cpp_venv)), "model": str(layout.gguf_model),
                   "ctx_size": 1024, "n_threads": 1})
    blocks = ['[[gpu]]\nid = "bench"\nmemory_gb = 10\nmin_residency = 0\nmax_wait = 60\n']
    for name in ("swap-a", "swap-b"):
        blocks.append(f'[[serve]]\nname = "{name}"\ntier = "fast"\nengine = "openai"\nruntime = "process"\n'
                      f'preset = "llama_cpp"\nport = {ports[name]}\nmodel = "{name}"\nready_timeout = 180\n'
                      f'on_demand = true\ngpu = "bench"\nvram_gb = 6\ndrain_timeout = 60\npreset_args = {args}\n')
    blocks.append(f'[[serve]]\nname = "queued"\ntier = "fast"\nengine = "openai"\nruntime = "process"\n'
                  f'preset = "llama_cpp"\nport = {ports["queued"]}\nmodel = "queued"\nready_timeout = 180\n'
                  f'target_inflight = 1\nmax_queue = 500\npreset_args = {args}\n')
    # The same engine as a serve with no queue: the overhead comparison has no engine noise in it.
    blocks.append(f'[[serve]]\nname = "plain"\ntier = "fast"\nengine = "openai"\nmodel = "queued"\n'
                  f'base_url = "http://127.0.0.1:{ports["queued"]}/v1"\n')
    path = work / "serves.toml"
    path.write_text("\n".join(blocks))
    return path, ports


def start_stack(work: Path, processes: ExitStack) -> tuple[str, dict[str, str], list[str], dict[str, int]]:
    path, ports = manifest(work)
    keys = {"bench-admin": ("admin",), **{f"bench-{n}": () for n in range(4)}}
    stack = embedded_stack.start(work, processes, path, keys, ANVIL_MAX_CONCURRENCY_PER_KEY="256")
    return stack.url, stack.bearer("bench-admin"), [stack.secrets[f"bench-{n}"] for n in range(4)], ports


async def stream(session: aiohttp.ClientSession, url: str, key: str | None,
                 model: str) -> tuple[float, float, int, bool]:
    """(first token at, ended at, tokens, ended whole) of one streamed answer."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to twenty."}]}
    first, tokens, done, finish = 0.0, 0, False, None
    async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as answer:
        if answer.status != 200:
            raise RuntimeError(f"{model}: HTTP {answer.status} {await answer.text()}")
        async for line in answer.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: {"):
                choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    first = first or time.perf_counter()
                finish = choice.get("finish_reason") or finish
    return first, time.perf_counter(), tokens, done and finish in ("length", "stop")


async def metrics(session: aiohttp.ClientSession, anvil: str) -> dict[str, float]:
    async with session.get(f"{anvil}/metrics") as answer:
        text = await answer.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("anvil_swap", "anvil_drain", "anvil_load")) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def total(figures: dict[str, float], prefix: str) -> float:
    return sum(value for name, value in figures.items() if name.startswith(prefix))


async def swaps(anvil: str, key: str, count: int) -> dict[str, object]:
    """``count`` swaps with the resident idle (timed), then ``count`` under steady load (resets counted)."""
    url = f"{anvil}/v1/chat/completions"
    timed: list[float] = []
    async with aiohttp.ClientSession() as session:
        await stream(session, url, key, "swap-a")  # a resident to swap out
        before = await metrics(session, anvil)
        for index in range(count):
            model = ("swap-b", "swap-a")[index % 2]
            sent = time.perf_counter()
            first, _end, tokens, whole = await stream(session, url, key, model)
            assert whole and tokens, (model, tokens)
            timed.append(first - sent)
            print(f"\r  swap {index + 1}/{count} (idle resident)", end="", file=sys.stderr, flush=True)
        after = await metrics(session, anvil)
        # Under load: a client streams to the resident model back to back; another asks for the other model.
        resets = lost = answered = 0
        errors: list[str] = []
        stop = asyncio.Event()
        resident = {"model": "swap-a" if count % 2 == 0 else "swap-b"}

        async def steady() -> None:
            nonlocal resets, lost, answered
            while not stop.is_set():
                try:
                    _first, _end, tokens, whole = await stream(session, url, key, resident["model"])
                    answered += 1
                    if not whole:
                        lost += 1
                except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                    resets += 1
                    errors.append(str(exc)[:300])
                    await asyncio.sleep(0.05)

        background = [asyncio.ensure_future(steady()) for _ in range(2)]
        under_load = 0
        for index in range(count):
            other = "swap-b" if resident["model"] == "swap-a" else "swap-a"
            try:
                _first, _end, tokens, whole = await stream(session, url, key, other)
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                resets += 1
                errors.append(str(exc)[:300])
                continue
            if not whole:
                lost += 1
            resident["model"] = other
            under_load += 1
            print(f"\r  swap {index + 1}/{count} (under load)   ", end="", file=sys.stderr, flush=True)
        stop.set()
        await asyncio.gather(*background)
        final = await metrics(session, anvil)
    print("", file=sys.stderr)
    swapped = total(after, "anvil_swaps_total") - total(before, "anvil_swaps_total")
    def mean(name: str) -> float:
        return (total(after, name) - total(before, name)) / max(swapped, 1)

    return {
        "timed": timed, "swaps_counted": swapped,
        "drain_s": mean("anvil_drain_seconds_sum"), "load_s": mean("anvil_load_seconds_sum"),
        "under_load_swaps": total(final, "anvil_swaps_total") - total(after, "anvil_swaps_total"),
        "steady_streams": answered, "resets": resets, "lost": lost, "requested_under_load": under_load,
        "errors": sorted(set(errors))[:5],
    }


def engine_swap_baseline(ports: dict[str, int], runs: int) -> list[float]:
    """The same work without Anvil: stop one llama.cpp server, start the other, stream its first token."""
    layout = built_layout()
    python = str(layout.python(layout.llama_cpp_venv))

    def argv(port: int) -> list[str]:
        return [python, "-m", "llama_cpp.server", "--model", str(layout.gguf_model), "--port", str(port),
                "--host", "127.0.0.1", "--n_ctx", "1024", "--n_threads", "1"]

    async def first_token(port: int) -> float:
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    first, _end, _tokens, _whole = await stream(session, f"http://127.0.0.1:{port}/v1/chat/completions",
                                                                None, "x")
                    return first
                except (aiohttp.ClientError, RuntimeError):
                    await asyncio.sleep(0.01)
        raise TimeoutError(port)

    timings = []
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
        current = subprocess.Popen(argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        asyncio.run(first_token(port))
        for index in range(runs):
            started = time.perf_counter()
            os.killpg(current.pid, signal.SIGTERM)
            current.wait(timeout=60)
            port = free_port()
            current = subprocess.Popen(argv(port), stdout=subprocess.DEVNULL, stderr=open(Path(logs) / "e.log", "w"),
                                       start_new_session=True)
            timings.append(asyncio.run(first_token(port)) - started)
            print(f"\r  baseline swap {index + 1}/{runs}", end="", file=sys.stderr, flush=True)
        os.killpg(current.pid, signal.SIGTERM)
        current.wait(timeout=60)
    print("", file=sys.stderr)
    return timings


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


async def fairness(anvil: str, keys: list[str], seconds: float) -> float:
    """Each key keeps 8 requests in flight against the one-slot serve; Jain's index over answers per key."""
    url = f"{anvil}/v1/chat/completions"
    answered = {key: 0 for key in keys}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        async def flood(key: str) -> None:
            while time.monotonic() < deadline:
                await stream(session, url, key, "queued")
                if time.monotonic() < deadline:
                    answered[key] += 1

        await asyncio.gather(*(flood(key) for key in keys for _ in range(8)))
    return jain(list(answered.values()))


async def overhead(anvil: str, key: str, rounds: int) -> tuple[float, float]:
    """p50 TTFT through the queued serve and the plain one, interleaved, nothing waiting."""
    url = f"{anvil}/v1/chat/completions"
    samples: dict[str, list[float]] = {"queued": [], "plain": []}
    async with aiohttp.ClientSession() as session:
        for model in ("queued", "plain"):
            for _ in range(5):
                await stream(session, url, key, model)  # warm
        for _ in range(rounds):
            for model in ("queued", "plain"):
                sent = time.perf_counter()
                first, _end, _tokens, _whole = await stream(session, url, key, model)
                samples[model].append(first - sent)
    return statistics.median(samples["queued"]), statistics.median(samples["plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=50)
    parser.add_argument("--fairness-seconds", type=float, default=20)
    parser.add_argument("--overhead-rounds", type=int, default=200)
    parser.add_argument("--skip-fairness", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anvil-pool-bench-") as tmp, ExitStack() as processes:
        anvil, admin, keys, ports = start_stack(Path(tmp), processes)
        import httpx

        httpx.post(f"{anvil}/v1/admin/models/queued/load", headers=admin, timeout=10)
        print("swaps...", file=sys.stderr)
        swapped = asyncio.run(swaps(anvil, keys[0], args.swaps))
        print("baseline...", file=sys.stderr)
        baseline = engine_swap_baseline(ports, min(args.swaps, 10))
        fair = {}
        if not args.skip_fairness:
            for count in (2, 4):
                print(f"fairness, {count} keys...", file=sys.stderr)
                fair[count] = asyncio.run(fairness(anvil, keys[:count], args.fairness_seconds))
        print("overhead...", file=sys.stderr)
        queued, plain = asyncio.run(overhead(anvil, keys[0], args.overhead_rounds))
    timed = swapped["timed"]
    swap_p50, base_p50 = statistics.median(timed), statistics.median(baseline)  # type: ignore[arg-type]
    added = swap_p50 - base_p50
    print(f"run: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores; "
          f"two llama.cpp servers (tiny Llama), max_tokens {MAX_TOKENS}\n")
    print("| swap (idle resident) | p50 | max | parts (Anvil's counters, mean) |\n|---|---|---|---|")
    print(f"| through Anvil, request to first token | {swap_p50 * 1000:.0f} ms | {max(timed) * 1000:.0f} ms | "  # type: ignore[arg-type]
          f"drain {swapped['drain_s'] * 1000:.0f} ms, load (evict + stop + start + ready) "
          f"{swapped['load_s'] * 1000:.0f} ms |")
    print(f"| engines alone: stop, start, first token | {base_p50 * 1000:.0f} ms | {max(baseline) * 1000:.0f} ms | |")
    verdict = "met" if added <= 0.5 else "**not met**"
    print(f"| **Anvil adds** | **{added * 1000:.0f} ms** | | goal <= 500 ms: {verdict} |")
    print(f"\nswaps counted: {swapped['swaps_counted']:.0f} idle + {swapped['under_load_swaps']:.0f} under load; "
          f"steady streams during those: {swapped['steady_streams']}; resets {swapped['resets']}, "
          f"streams cut short {swapped['lost']} (goal 0 and 0)")
    for error in swapped["errors"]:  # type: ignore[attr-defined]
        print(f"  error: {error}")
    if fair:
        print("\n| keys flooding a one-slot serve | Jain's index | goal |\n|---|---|---|")
        for count, index in fair.items():
            print(f"| {count} | {index:.3f} | >= 0.95: {'met' if index >= 0.95 else '**not met**'} |")
    print(f"\nqueue overhead, nothing waiting: TTFT p50 {queued * 1000:.2f} ms with a queue, {plain * 1000:.2f} ms "
          f"without: {(queued - plain) * 1000:+.2f} ms (goal <= 0.1 ms: "
          f"{'met' if queued - plain <= 0.0001 else '**not met**'})")


if __name__ == "__main__":
    main()
