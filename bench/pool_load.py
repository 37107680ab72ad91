"""Pool benchmark: from ``POST /v1/admin/models/NAME/load`` to the first token through the front door,
split into the engine's own start and Anvil's part.

    .venv/bin/python bench/pool_load.py                      # llama.cpp x5 and vLLM x2, prints a Markdown table
    .venv/bin/python bench/pool_load.py --engines llama_cpp --runs 3

The engines are the real ones the suite tests against (``make engines``: llama.cpp's server and vLLM's
CPU build, serving a tiny Llama), as ``process`` serves imported from a serves.toml. Anvil runs as in
production, one web process and one Celery worker on an embedded Redis and SQLite.

Per load, four instants on one clock (``time.time()``):

* ``t0``: the load request is sent;
* ``spawned``: the serve's keeper started the engine (its ``engine.json``);
* ``ready``: the engine first answers its own ``/v1/models`` (polled directly every 10 ms);
* ``first``: the first content token reaches a client that has been asking the front door every 25 ms.

The engine's own start is ``ready - spawned``. The engine's time to a first token once ready (``ttft``)
is measured directly right after, the median of five. Anvil's part is what is left:
``(first - t0) - (ready - spawned) - ttft``: the Celery hand-off and the keeper before the spawn,
then the readiness poll, the state's way to the web process and the relay after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import embedded_stack  # noqa: E402
from serves.process_keeper import ENGINE_FILE  # noqa: E402
from tests.support.engines import built_layout  # noqa: E402
from tests.support.processes import free_port  # noqa: E402

POLL_ENGINE, POLL_FRONT_DOOR = 0.010, 0.025
LOAD_DEADLINE = {"llama_cpp": 180.0, "vllm": 600.0}
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "stream": True}


@dataclass
class Load:
    engine: str
    total: float
    before_spawn: float
    engine_start: float
    engine_ttft: float
    after_ready: float

    @property
    def anvil(self) -> float:
        return self.total - self.engine_start - self.engine_ttft


def inline(table: dict[str, object]) -> str:
    """A TOML inline table (strings as JSON strings, which TOML reads alike)."""
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + " }"


def manifest(work: Path, engines: list[str]) -> tuple[Path, dict[str, int]]:
    """A serves.toml with one process serve per engine (ports fixed here so the bench can poll them)."""
    layout = built_layout()
    ports: dict[str, int] = {}
    blocks = []
    if "llama_cpp" in engines:
        ports["llama_cpp"] = free_port()
        blocks.append(f'''[[serve]]
name = "llama_cpp"
tier = "fast"
engine = "openai"
runtime = "process"
preset = "llama_cpp"
port = {ports["llama_cpp"]}
model = "llama_cpp"
ready_timeout = 180
preset_args = {inline({"python": str(layout.python(layout.llama_cpp_venv)), "model": str(layout.gguf_model),
                       "ctx_size": 1024, "n_threads": 1})}
''')
    if "vllm" in engines:
        ports["vllm"] = free_port()
        blocks.append(f'''[[serve]]
name = "vllm"
tier = "fast"
engine = "vllm"
runtime = "process"
preset = "vllm"
port = {ports["vllm"]}
model = "vllm"
ready_timeout = 600
env = {{ VLLM_CPU_KVCACHE_SPACE = "1" }}
preset_args = {inline({"python": str(layout.python(layout.vllm_venv)), "model": str(layout.hf_model),
                       "dtype": "float32", "max_model_len": 1024, "enforce_eager": True})}
''')
    path = work / "serves.toml"
    path.write_text("\n".join(blocks))
    return path, ports


def engine_spawned_at(serve_dir: Path, after: float, deadline: float) -> float:
    """When the keeper started the engine (its engine.json; process create_time is only as exact as the
    kernel's boot time, whole seconds)."""
    path = serve_dir / ENGINE_FILE
    while time.time() < deadline:
        try:
            started = float(json.loads(path.read_text())["started"])
            if started >= after:
                return started
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no engine started under {serve_dir}")


async def first_ok(session: aiohttp.ClientSession, url: str, deadline: float) -> float:
    while time.time() < deadline:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
                if answer.status == 200:
                    return time.time()
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(POLL_ENGINE)
    raise TimeoutError(url)


async def first_token(session: aiohttp.ClientSession, url: str, headers: dict[str, str], model: str,
                      deadline: float, pause: float = POLL_FRONT_DOOR) -> float:
    """Ask until a streamed answer carries content; the instant that content arrived."""
    while time.time() < deadline:
        try:
            async with session.post(url, json={**CHAT, "model": model}, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=60)) as answer:
                if answer.status == 200:
                    async for line in answer.content:
                        if has_content(line):
                            return time.time()
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(pause)
    raise TimeoutError(url)


def has_content(line: bytes) -> bool:
    if not line.startswith(b"data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def engine_ttft(session: aiohttp.ClientSession, port: int, model: str) -> float:
    samples = []
    for _ in range(5):
        sent = time.time()
        samples.append(await first_token(session, f"http://127.0.0.1:{port}/v1/chat/completions", {}, model,
                                         sent + 60) - sent)
    return statistics.median(samples)


async def one_load(anvil: str, admin: dict[str, str], key: dict[str, str], engine: str, port: int,
                   serve_dir: Path) -> Load:
    deadline = time.time() + LOAD_DEADLINE[engine]
    async with aiohttp.ClientSession() as session:
        t0 = time.time()
        async with session.post(f"{anvil}/v1/admin/models/{engine}/load", headers=admin, json={}) as answer:
            if answer.status != 202:
                raise RuntimeError(f"load {engine}: {answer.status} {await answer.text()}")
        spawned_task = asyncio.get_running_loop().run_in_executor(None, engine_spawned_at, serve_dir, t0, deadline)
        ready_task = asyncio.ensure_future(first_ok(session, f"http://127.0.0.1:{port}/v1/models", deadline))
        first = await first_token(session, f"{anvil}/v1/chat/completions", key, engine, deadline)
        spawned, ready = await spawned_task, await ready_task
        ttft = await engine_ttft(session, port, engine)
        async with session.post(f"{anvil}/v1/admin/models/{engine}/unload", headers=admin) as answer:
            assert answer.status in (200, 202), await answer.text()
        while time.time() < deadline + 120:
            async with session.get(f"{anvil}/v1/admin/models", headers=admin) as answer:
                rows = (await answer.json())["data"]
            if next(row for row in rows if row["id"] == engine)["state"] == "unloaded":
                break
            await asyncio.sleep(0.2)
    return Load(engine, first - t0, spawned - t0, ready - spawned, ttft, first - ready - ttft)


def stack(work: Path, engines: list[str], processes: ExitStack) -> tuple[str, dict[str, str], dict[str, str],
                                                                          dict[str, int]]:
    path, ports = manifest(work, engines)
    started = embedded_stack.start(work, processes, path, {"bench-admin": ("admin",), "bench": ()})
    return started.url, started.bearer("bench-admin"), started.bearer("bench"), ports


def report(loads: list[Load], args: argparse.Namespace) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms" + (f" (max {max(values) * 1000:.0f})"
                                                               if len(values) > 1 else "")

    counts = ", ".join(f"{e} x{sum(1 for x in loads if x.engine == e)}" for e in args.engines)
    lines = [f"run: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, {len(loads)} loads "
             f"({counts})",
             "", "| engine | load to first token | engine start | engine TTFT | Anvil's part | before spawn | "
             "after ready | target |", "|---|---|---|---|---|---|---|---|"]
    for engine in args.engines:
        mine = [load for load in loads if load.engine == engine]
        if not mine:
            continue
        anvil = statistics.median(load.anvil for load in mine)
        lines.append(f"| {engine} | {ms([x.total for x in mine])} | {ms([x.engine_start for x in mine])} | "
                     f"{ms([x.engine_ttft for x in mine])} | {ms([x.anvil for x in mine])} | "
                     f"{ms([x.before_spawn for x in mine])} | {ms([x.after_ready for x in mine])} | "
                     f"≤ 500 ms: {'met' if anvil <= 0.5 else '**not met**'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", choices=["llama_cpp", "vllm"], default=["llama_cpp", "vllm"])
    parser.add_argument("--runs", type=int, default=0, help="loads per engine (default: llama.cpp 5, vLLM 2)")
    args = parser.parse_args()
    runs = {engine: args.runs or {"llama_cpp": 5, "vllm": 2}[engine] for engine in args.engines}
    loads: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="anvil-pool-bench-") as tmp, ExitStack() as processes:
        anvil, admin, key, ports = stack(Path(tmp), args.engines, processes)
        total = sum(runs.values())
        for engine in args.engines:
            for _ in range(runs[engine]):
                done = len(loads)
                print(f"\r[{'#' * done}{'.' * (total - done)}] loading {engine}...", end="", file=sys.stderr,
                      flush=True)
                loads.append(asyncio.run(one_load(anvil, admin, key, engine, ports[engine],
                                                  Path(tmp) / "anvil-var" / "serves" / engine)))
        print(f"\r[{'#' * total}] done{' ' * 30}", file=sys.stderr)
    print(report(loads, args))
    print("\nper load (s):", json.dumps([[x.engine, round(x.total, 3), round(x.engine_start, 3),
                                         round(x.engine_ttft, 3), round(x.anvil, 3)] for x in loads]))


if __name__ == "__main__":
    main()
