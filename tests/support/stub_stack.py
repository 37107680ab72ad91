"""A stack of stub children under the real Supervisor, for tests that need real signals.

``python tests/support/stub_stack.py --flag-dir DIR`` runs, like ``runstack``, a
Supervisor with signal handlers installed, but its children are shell one-liners
that start in milliseconds: a sleeper; a "pool" whose grandchild ignores SIGTERM
(as Celery's pool processes may); one that becomes ready 0.2 s after it starts
(a file appears); one that takes 0.2 s to stop on SIGTERM; and a restartable one
that crashes every 0.1 s. It prints each child's pid (``started NAME (pid N)``).

``--sigterm-at-event K`` makes the process send itself SIGTERM at the K-th
Python call or return in its main thread, so the handler runs at a chosen
instruction boundary, including those where the main thread holds a lock.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any


def _load_launcher() -> Any:
    # The launcher module needs only the standard library. Loaded by path, it skips
    # anvil_site/__init__.py (the Celery app: ~0.4 s of CPU per process, times a stress test's runs).
    path = Path(__file__).resolve().parents[2] / "anvil_site" / "launcher.py"
    spec = importlib.util.spec_from_file_location("anvil_launcher", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


launcher = _load_launcher()
ChildSpec, LaunchError, StopRequested = launcher.ChildSpec, launcher.LaunchError, launcher.StopRequested


def children(flag_dir: Path) -> list[Any]:
    ready_flag = flag_dir / "ready"
    return [
        ChildSpec("sleeper", ["sleep", "30"]),
        ChildSpec("pool", ["sh", "-c", "sh -c 'trap \"\" TERM; sleep 30; :' & exec sleep 30"]),
        ChildSpec("ready", ["sh", "-c", f"sleep 0.2; : > '{ready_flag}'; exec sleep 30"],
                  ready=ready_flag.exists, ready_timeout=10),
        ChildSpec("slowstop", ["sh", "-c", "trap 'sleep 0.2; exit 0' TERM; sleep 30 & wait"]),
        ChildSpec("crasher", ["sh", "-c", "sleep 0.1; exit 3"], restart=True),
    ]


def sigterm_at_event(k: int) -> None:
    count = 0

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        count += 1
        if count == k:
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGTERM)

    sys.setprofile(hook)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag-dir", type=Path, required=True)
    parser.add_argument("--stop-timeout", type=float, default=2.0)
    parser.add_argument("--sigterm-at-event", type=int, default=0)
    args = parser.parse_args()
    supervisor = launcher.Supervisor(
        stop_timeout=args.stop_timeout,
        restart_policy=launcher.RestartPolicy(first_delay=0.05, max_delay=0.2, max_restarts=1000))
    supervisor.install_signal_handlers()
    if args.sigterm_at_event:
        sigterm_at_event(args.sigterm_at_event)
    code = 1
    try:
        for spec in children(args.flag_dir):
            supervisor.start(spec)
        supervisor.say("up")
        code = supervisor.wait()
    except StopRequested as exc:
        supervisor.say(f"{exc}; stopping the stack")
        code = 0
    except LaunchError as exc:
        supervisor.say(f"cannot start: {exc}")
    finally:
        supervisor.stop_all()
    return code


if __name__ == "__main__":
    sys.exit(main())
