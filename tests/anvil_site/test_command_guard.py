"""A management command pointed at another database says so in one line, and creates nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT


def manage(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "ANVIL_VAR_DIR": str(var_dir), "HOME": str(var_dir)}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_a_command_against_a_var_dir_with_no_database_says_so_and_creates_none(tmp_path: Path) -> None:
    answer = manage(tmp_path, "apikey", "list")
    assert answer.returncode == 2
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in answer.stderr
    assert "no database at SQLite at" in lines[0] and f"ANVIL_VAR_DIR={tmp_path}" in lines[0]
    assert not (tmp_path / "anvil.sqlite3").exists()


def test_a_command_against_an_unmigrated_database_says_so_in_one_line(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "anvil.sqlite3").close()  # exists, holds no tables
    answer = manage(tmp_path, "serves", "status")
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert answer.stderr.strip().splitlines() == [answer.stderr.strip()]
    assert "is not migrated (no such table" in answer.stderr and "manage.py migrate" in answer.stderr
