"""Environment for the test run, loaded with ``-p tests.environment`` before Django reads settings.

Tests get their own var directory (SQLite test database file, embedded Redis
socket, secret key) so they never touch the one a running ``make run`` uses.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("ANVIL_VAR_DIR", str(ROOT / "var" / "test"))
# One prefix per run: breakers and queues left in a shared Redis by an earlier run don't leak in.
os.environ.setdefault("ANVIL_REDIS_PREFIX", f"anvil-test-{os.getpid()}")
