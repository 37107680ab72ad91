"""The ``process`` runtime: an engine Anvil starts, supervises and stops as a process on this host.

Each serve has a folder, ``<ANVIL_VAR_DIR>/serves/<name>/``:

* ``process.json``: the keeper's pid (it leads the engine's process group), its argv, port, start time;
* ``output.log`` (and ``output.log.1``): the engine's output, size-bounded by the keeper;
* ``exit.json``: written by the keeper when the engine exits (code, time);
* ``lock``: held while a start decides whether to start, so one host never starts a serve twice.

The process belongs to the host, not to the Celery worker that started it: a new worker adopts it
again from ``process.json`` (the pid is alive and its command line is this serve's keeper), so a
worker restart neither starts a second copy nor orphans the first. Stop is SIGTERM to the whole
group, then SIGKILL after the serve's ``stop_timeout``: no child of the engine survives.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings

from serves import process_keeper
from serves.models import Serve
from serves.process_keeper import EXIT_FILE, LOG_FILE

RECORD_FILE = "process.json"
MAX_LOG_BYTES = 8 * 1024 * 1024
# What a serve's process never inherits from the host: Anvil's own secrets and upstream keys.
_PRIVATE = re.compile(
    r"^(DATABASE_URL|REDIS_URL|DJANGO_SECRET_KEY|ANVIL_ADMIN_PASSWORD|ANVIL_UPSTREAM_KEY_.*|.*_API_KEY)$")
# Nor the project's own interpreter settings: an engine in a venv of its own must not see Anvil's.
_INTERPRETER = frozenset({"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"})
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class ProcessRecord:
    serve: str
    pid: int  # the keeper's, which leads the process group
    argv: list[str]
    port: int | None
    started_at: float


@dataclass(frozen=True)
class Observed:
    """What the runtime sees of a serve now."""

    running: bool
    exit_code: int | None = None
    detail: str = ""


def serve_dir(name: str) -> Path:
    path = Path(settings.VAR_DIR) / "serves" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    with open(serve_dir(name) / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


def _is_keeper_of(pid: int, name: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"process_keeper.py") for part in argv) and name.encode() in argv


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie has exited: it does not count)."""
    return any(_alive(int(pid)) for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[str]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                members.append(entry)
    return members


def process_env(serve: Serve) -> dict[str, str]:
    """The host's environment without Anvil's secrets, then the serve's own (``${NAME}`` read from the host)."""
    env = {name: value for name, value in os.environ.items() if not _PRIVATE.match(name) and name not in _INTERPRETER}
    for name, value in (serve.env or {}).items():
        env[name] = _VARIABLE.sub(lambda match: os.environ.get(match.group(1), ""), value)
    if serve.library_path:
        env["LD_LIBRARY_PATH"] = serve.library_path + (
            os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ProcessRuntime:
    def record(self, serve: Serve) -> ProcessRecord | None:
        """The serve's live process on this host, adopted from its record; None when there is none."""
        path = serve_dir(serve.name) / RECORD_FILE
        try:
            found = ProcessRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if _alive(found.pid) and _is_keeper_of(found.pid, serve.name):
            return found
        return None

    def start(self, serve: Serve, argv: list[str]) -> tuple[ProcessRecord, bool]:
        """(the process, whether this call started it): a live one is adopted, never started twice."""
        with _locked(serve.name):
            running = self.record(serve)
            if running is not None:
                return running, False
            directory = serve_dir(serve.name)
            # By file, not -m: the engine's cwd may be anywhere, and the keeper needs nothing but the stdlib.
            keeper = [sys.executable, process_keeper.__file__, "--dir", str(directory), "--max-log-bytes",
                      str(MAX_LOG_BYTES), "--serve", serve.name, "--", *argv]
            with open(directory / "keeper.log", "ab") as keeper_log:
                process = subprocess.Popen(
                    keeper, cwd=serve.cwd or None, env=process_env(serve), stdin=subprocess.DEVNULL,
                    stdout=keeper_log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            # Reap the keeper if it ends while this process lives (else it lingers as a zombie); if this
            # process ends first, init adopts and reaps it.
            threading.Thread(target=process.wait, name=f"reap-{serve.name}", daemon=True).start()
            started = ProcessRecord(serve.name, process.pid, argv, serve.port, time.time())
            temporary = directory / (RECORD_FILE + ".tmp")
            temporary.write_text(json.dumps(asdict(started)))
            os.replace(temporary, directory / RECORD_FILE)
            return started, True

    def observe(self, serve: Serve) -> Observed:
        if self.record(serve) is not None:
            return Observed(True)
        exit_code = self.exit_code(serve)
        if exit_code is not None:
            return Observed(False, exit_code, f"the process exited with code {exit_code}")
        return Observed(False, None, "no process")

    def exit_code(self, serve: Serve) -> int | None:
        try:
            return int(json.loads((serve_dir(serve.name) / EXIT_FILE).read_text())["code"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stop(self, serve: Serve, timeout: float | None = None) -> bool:
        """SIGTERM to the whole group, SIGKILL after ``timeout``; True when something was stopped."""
        running = self.record(serve)
        if running is None:
            (serve_dir(serve.name) / RECORD_FILE).unlink(missing_ok=True)
            return False
        limit = serve.stop_timeout if timeout is None else timeout
        _signal_group(running.pid, signal.SIGTERM)
        deadline = time.monotonic() + limit
        while _group_alive(running.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(running.pid):
            _signal_group(running.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _group_alive(running.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        (serve_dir(serve.name) / RECORD_FILE).unlink(missing_ok=True)
        return True

    def log_tail(self, serve: Serve, max_bytes: int = 8192) -> str:
        directory = serve_dir(serve.name)
        data = b""
        for name in (LOG_FILE + ".1", LOG_FILE):
            try:
                data += (directory / name).read_bytes()
            except OSError:
                continue
        return data[-max_bytes:].decode("utf-8", "replace")


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def recorded_serves() -> list[str]:
    """The serves with a process record on this host (what the launcher stops with the stack)."""
    root = Path(settings.VAR_DIR) / "serves"
    return sorted(path.parent.name for path in root.glob(f"*/{RECORD_FILE}")) if root.is_dir() else []


PROCESSES = ProcessRuntime()
