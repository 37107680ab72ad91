"""Soak: N concurrent streams for D seconds through the default stack; errors, TTFT drift, web-process RSS.

    .venv/bin/python bench/soak.py                  # 200 streams for 600 s: prints a Markdown table
    .venv/bin/python bench/soak.py --quick          # 50 streams for 60 s, 10 s buckets: a smoke check

The stack is ``manage.py runstack --no-hrm``, as ``make run`` starts it less the demo model: the embedded
Redis, Daphne (the web process), a Celery worker and beat, SQLite, in a fresh var directory. Its one serve is
a scripted upstream (tests/support/scripted_upstream.py) streaming 64 deltas 20 ms apart, measured ``allow``
in the live profile. Each of the N clients (this process, aiohttp) opens a stream, reads it to [DONE], and
opens the next until D seconds have passed; the streams in flight then finish. The clients share
ceil(N / 100) keys, as the default per-key cap (ANVIL_MAX_CONCURRENCY_PER_KEY, 128) would refuse the rest.

An error is anything but a whole answer: a status other than 200, an error event, a stream without every
delta and [DONE], a client timeout. TTFT is from the request's start to its first content delta, bucketed
by when the stream started. RSS is the web process's, at the start (ready, before any load), after each
bucket, and at the end. Last, the decision records the worker wrote are counted against the streams sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, running  # noqa: E402

DELTAS, DELAY_MS = 64, 20
STREAMS_PER_KEY = 100
MESSAGES = [{"role": "user", "content": "Say something."}]
STREAM_TIMEOUT = 120.0  # a client's own limit on one stream: a hang shows up as an error, not a stuck soak


@dataclass
class Bucket:
    started: int = 0
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft: list[float] = field(default_factory=list)
    rss_mib: float | None = None


@dataclass
class Soak:
    bucket_seconds: float
    buckets: list[Bucket] = field(default_factory=list)
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    records: int | None = None

    def bucket(self, at: float) -> Bucket:
        index = int(at // self.bucket_seconds)
        while len(self.buckets) <= index:
            self.buckets.append(Bucket())
        return self.buckets[index]

    @property
    def sent(self) -> int:
        return sum(b.started for b in self.buckets)

    @property
    def completed(self) -> int:
        return sum(b.completed for b in self.buckets)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for bucket in self.buckets:
            for kind, count in bucket.errors.items():
                out[kind] = out.get(kind, 0) + count
        return out


# --- the stack ------------------------------------------------------------------------------------


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, check=True, timeout=120,
                          capture_output=True, text=True).stdout


def wait(condition: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:g} s: {log.read_text()[-3000:]}")


def start_stack(work: Path, streams: int, stack: ExitStack) -> tuple[str, list[str], int, dict[str, str]]:
    """The upstream and ``runstack --no-hrm`` with one serve; (front door URL, keys, web pid, env)."""
    import httpx

    up_port = free_port()
    up_log = work / "upstream.log"
    stack.enter_context(running([sys.executable, str(ROOT / "tests/support/scripted_upstream.py"), "--port",
                                 str(up_port), "--deltas", str(DELTAS), "--delay-ms", str(DELAY_MS)],
                                dict(os.environ), up_log))
    upstream = f"http://127.0.0.1:{up_port}"
    wait(lambda: httpx.get(f"{upstream}/health", timeout=1).status_code == 200, 30, "the upstream", up_log)

    port = free_port()
    env = {**os.environ, "ANVIL_VAR_DIR": str(work / "var"), "ANVIL_BIND": f"127.0.0.1:{port}",
           "ANVIL_ADMIN_PASSWORD": "soak-admin-password"}
    for name in ("DATABASE_URL", "REDIS_URL", "ANVIL_REDIS_PREFIX"):
        env.pop(name, None)  # the defaults: SQLite and the embedded Redis, in the fresh var directory
    stack_log = work / "stack.log"
    launcher = stack.enter_context(running([sys.executable, str(ROOT / "manage.py"), "runstack", "--no-hrm"],
                                           env, stack_log))
    anvil = f"http://127.0.0.1:{port}"
    wait(lambda: launcher.poll() is None and httpx.get(f"{anvil}/readyz", timeout=1).status_code == 200, 120,
         "runstack", stack_log)
    web = [p for p in psutil.Process(launcher.pid).children(recursive=True)
           if "anvil_site.asgi:application" in " ".join(p.cmdline())]
    if len(web) != 1:
        raise RuntimeError(f"expected one web process under runstack, found {len(web)}")

    (work / "serves.toml").write_text(f'[[serve]]\nname = "soak"\ntier = "fast"\nengine = "vllm"\n'
                                      f'base_url = "{upstream}/v1"\nmodel = "up-model"\n')
    manage(env, "serves", "import", str(work / "serves.toml"))
    (work / "profile.json").write_text(json.dumps({"schema_version": 2, "entries": [
        {"kind": "tier", "subject": "fast", "work_class": wc, "decision": "allow", "quality": 0.9, "samples": 50}
        for wc in ("chat", "bounded-edit", "review", "planning", "multi-file-refactor", "long-context")]}))
    manage(env, "profile", "import", str(work / "profile.json"), "--profile", "live")
    keys = [manage(env, "apikey", "create", f"soak-{i}").strip().splitlines()[-1]
            for i in range(math.ceil(streams / STREAMS_PER_KEY))]

    def routed() -> bool:
        decision = httpx.post(f"{anvil}/v1/route", headers={"authorization": f"Bearer {keys[0]}"}, timeout=5,
                              json={"model": "soak", "messages": MESSAGES}).json()
        first = (decision.get("candidates") or [{}])[0]
        return (first.get("serve"), first.get("verdict")) == ("soak", "allow")

    wait(routed, 60, "the serve in the web process's routing", stack_log)
    return anvil, keys, web[0].pid, env


def decision_records(env: dict[str, str]) -> int:
    out = manage(env, "shell", "-c", "from routing.models import DecisionRecord; "
                                     "print(DecisionRecord.objects.filter(api_key__startswith='soak-').count())")
    return int(out.strip().splitlines()[-1])


# --- the load --------------------------------------------------------------------------------------


async def one_stream(session: aiohttp.ClientSession, anvil: str, key: str) -> tuple[float | None, str | None]:
    """(TTFT, None) for a whole answer; (TTFT or None, what went wrong) otherwise."""
    started = time.perf_counter()
    ttft: float | None = None
    deltas, done, buffer = 0, False, b""
    try:
        async with session.post(f"{anvil}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                json={"model": "soak", "messages": MESSAGES, "stream": True}) as response:
            if response.status != 200:
                await response.read()
                return None, f"HTTP {response.status}"
            async for chunk in response.content.iter_any():
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if event == b"data: [DONE]":
                        done = True
                    elif b'"error"' in event:
                        return ttft, "error event"
                    elif b'"content": "tok' in event or b'"content":"tok' in event:
                        deltas += 1
                        if ttft is None:
                            ttft = time.perf_counter() - started
    except TimeoutError:
        return ttft, "client timeout"
    except aiohttp.ClientError as exc:
        return ttft, type(exc).__name__
    if not done or deltas != DELTAS:
        return ttft, "incomplete stream"
    return ttft, None


async def run_load(anvil: str, keys: list[str], web_pid: int, args: argparse.Namespace, soak: Soak) -> None:
    web = psutil.Process(web_pid)
    soak.rss_start_mib = web.memory_info().rss / 2**20
    connector = aiohttp.TCPConnector(limit=args.streams + 8)
    timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT)
    t0 = time.perf_counter()
    stop_at = t0 + args.seconds

    async def client(index: int) -> None:
        await asyncio.sleep(index / args.streams)  # the clients join over the first second, not all at once
        key = keys[index // STREAMS_PER_KEY]
        while time.perf_counter() < stop_at:
            bucket = soak.bucket(time.perf_counter() - t0)
            bucket.started += 1
            ttft, error = await one_stream(session, anvil, key)
            if ttft is not None:
                bucket.ttft.append(ttft)
            if error is None:
                bucket.completed += 1
            else:
                bucket.errors[error] = bucket.errors.get(error, 0) + 1

    async def progress() -> None:
        width = 40
        sampled = 0
        while True:
            elapsed = time.perf_counter() - t0
            while sampled < min(int(elapsed // args.bucket), len(soak.buckets)):  # RSS after each whole bucket
                soak.buckets[sampled].rss_mib = web.memory_info().rss / 2**20
                sampled += 1
            filled = min(width, int(width * elapsed / args.seconds))
            errors = sum(soak.errors().values())
            print(f"\r[{'#' * filled}{'.' * (width - filled)}] {min(elapsed, args.seconds):5.0f}/{args.seconds:g} s"
                  f"  {soak.completed} streams  {errors} errors  web RSS {web.memory_info().rss / 2**20:.0f} MiB ",
                  end="", file=sys.stderr, flush=True)
            await asyncio.sleep(1)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ticker = asyncio.ensure_future(progress())
        try:
            await asyncio.gather(*(client(i) for i in range(args.streams)))
        finally:
            ticker.cancel()
    soak.rss_end_mib = web.memory_info().rss / 2**20
    if soak.buckets and soak.buckets[-1].rss_mib is None:
        soak.buckets[-1].rss_mib = soak.rss_end_mib
    print(file=sys.stderr)


# --- report ------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def report(soak: Soak, args: argparse.Namespace, keys: int) -> str:
    unit = "minute" if args.bucket == 60 else f"{args.bucket:g} s"
    lines = [f"| {unit} | streams started | whole answers | errors | TTFT p50 | TTFT p99 | web RSS after |",
             "|---|---|---|---|---|---|---|"]
    for index, bucket in enumerate(soak.buckets):
        errors = sum(bucket.errors.values())
        rss = "-" if bucket.rss_mib is None else f"{bucket.rss_mib:.0f} MiB"
        lines.append(f"| {index + 1} | {bucket.started} | {bucket.completed} | {errors} | "
                     f"{ms(pct(bucket.ttft, 50))} | {ms(pct(bucket.ttft, 99))} | {rss} |")
    whole = [t for b in soak.buckets for t in b.ttft]
    full = [b for b in soak.buckets if b.ttft]
    first, last = (full[0], full[-1]) if full else (Bucket(), Bucket())
    drift = None if not full else pct(last.ttft, 99) - pct(first.ttft, 99)  # type: ignore[operator]
    errors = soak.errors()
    summary = [
        "| metric | value |", "|---|---|",
        f"| streams sent | {soak.sent} |",
        f"| whole answers | {soak.completed} |",
        f"| errors | {sum(errors.values())}" + (f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})"
                                                 if errors else "") + " |",
        f"| TTFT p50 / p99 (whole run) | {ms(pct(whole, 50))} / {ms(pct(whole, 99))} |",
        f"| TTFT p99 drift (last {unit} minus first) | {ms(drift)} |",
        f"| web RSS at start / end | {soak.rss_start_mib:.0f} MiB / {soak.rss_end_mib:.0f} MiB "
        f"({soak.rss_end_mib - soak.rss_start_mib:+.0f} MiB) |",
        f"| decision records written | {'-' if soak.records is None else soak.records} of {soak.sent} |",
    ]
    machine = f"{platform.node()}: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, " \
              f"Python {platform.python_version()}"
    plural = "s" if keys > 1 else ""
    run = (f"{args.streams} concurrent streams ({keys} key{plural}) for {args.seconds:g} s through `manage.py "
           f"runstack --no-hrm`; upstream: {DELTAS} deltas {DELAY_MS} ms apart; buckets by stream start")
    return "\n".join([f"machine: {machine}", f"run: {run}", "", *lines, "", *summary])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams (default 200)")
    parser.add_argument("--seconds", type=float, default=600, help="how long new streams are opened (default 600)")
    parser.add_argument("--bucket", type=float, default=60, help="seconds per row of the drift table (default 60)")
    parser.add_argument("--quick", action="store_true", help="50 streams for 60 s in 10 s buckets")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds, args.bucket = 50, 60, 10
    work = Path(tempfile.mkdtemp(prefix="anvil-soak-"))
    soak = Soak(args.bucket)
    try:
        with ExitStack() as stack:
            print("starting the stack …", file=sys.stderr)
            anvil, keys, web_pid, env = start_stack(work, args.streams, stack)
            asyncio.run(run_load(anvil, keys, web_pid, args, soak))
            deadline = time.monotonic() + 30  # beat drains the decision queue every second
            while time.monotonic() < deadline:
                soak.records = decision_records(env)
                if soak.records >= soak.sent:
                    break
                time.sleep(1)
        print(report(soak, args, len(keys)))
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
