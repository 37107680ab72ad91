"""The keeper of one process serve: ``python serves/process_keeper.py --dir D --serve NAME -- argv…``.

It starts the engine as its child, in the process group it leads (so a signal to the group reaches
both, and no grandchild of the engine survives a SIGKILL of the group), copies the engine's output
into a size-bounded log (``output.log``, rotated into ``output.log.1``), and when the engine exits
writes ``exit.json`` (exit code, time) before exiting with the same code.

It is its own process, not a thread of the Celery worker that started it: the serve outlives that
worker and is adopted again by the next one (``serves/runtimes/process.py``). No Django here: it must
start in milliseconds and depend on nothing that can fail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

EXIT_FILE = "exit.json"
ENGINE_FILE = "engine.json"  # the engine's pid and when it was started: how long its own start takes
LOG_FILE = "output.log"


class BoundedLog:
    """Appends lines; past ``max_bytes / 2`` the file becomes ``.1`` and a new one starts (two files at most)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.half = path, max(4096, max_bytes // 2)
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 (held for the engine's life)
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.half:
            self.file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            self.size = 0
        self.file.write(data)
        self.size += len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="process_keeper")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--max-log-bytes", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--serve", required=True)  # only for ps and /proc: which serve this keeper keeps
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    log = BoundedLog(args.dir / LOG_FILE, args.max_log_bytes)
    (args.dir / EXIT_FILE).unlink(missing_ok=True)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
    except OSError as exc:
        log.write(f"[keeper] cannot start {command[0]!r}: {exc}\n".encode())
        _exit_file(args.dir, 127)
        return 127
    _write_json(args.dir, ENGINE_FILE, {"pid": child.pid, "started": time.time()})

    def forward(signum: int, _frame: object) -> None:
        # A SIGTERM to the keeper alone (not the group) still stops the engine.
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    pump = threading.Thread(target=_pump, args=(child, log), daemon=True)
    pump.start()
    code = child.wait()
    pump.join(timeout=5)
    log.write(f"[keeper] the engine exited with code {code}\n".encode())
    _exit_file(args.dir, code)
    return 0 if code == 0 else (code if code > 0 else 128 - code)


def _pump(child: subprocess.Popen[bytes], log: BoundedLog) -> None:
    assert child.stdout is not None
    for line in iter(child.stdout.readline, b""):
        log.write(line)


def _exit_file(directory: Path, code: int) -> None:
    _write_json(directory, EXIT_FILE, {"code": code, "at": time.time()})


def _write_json(directory: Path, name: str, payload: dict[str, object]) -> None:
    temporary = directory / (name + ".tmp")
    temporary.write_text(json.dumps(payload))
    os.replace(temporary, directory / name)  # whole or not at all, for a reader polling it


if __name__ == "__main__":
    sys.exit(main())
