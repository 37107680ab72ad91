"""Settings come from the environment and are validated at start-up with named errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anvil_site import environment as env
from tests.support.processes import ROOT, manage


@pytest.fixture
def problems() -> Iterator[list[env.SettingProblem]]:
    saved = list(env.PROBLEMS)
    env.PROBLEMS.clear()
    try:
        yield env.PROBLEMS
    finally:
        env.PROBLEMS[:] = saved


def run(argv: list[str], **overrides: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **overrides}
    return subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def test_malformed_database_url_stops_check_naming_the_variable() -> None:
    result = run(manage("check"), DATABASE_URL="postgres//nohost")
    assert result.returncode != 0
    assert "anvil.E001" in result.stderr
    assert "DATABASE_URL" in result.stderr


def test_malformed_database_url_stops_the_launcher_before_it_starts_anything(tmp_path: Path) -> None:
    result = run(manage("runstack"), DATABASE_URL="mysql://x@y/z", ANVIL_VAR_DIR=str(tmp_path))
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "anvil.E001" in result.stderr
    assert not (tmp_path / "redis.sock").exists()


def test_web_process_refuses_to_import_with_a_malformed_redis_url() -> None:
    result = run([sys.executable, "-c", "import anvil_site.asgi"], REDIS_URL="ftp://127.0.0.1:6379")
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "anvil.E002" in result.stderr


def test_public_bind_is_warned_about_loudly() -> None:
    result = run(manage("check"), ANVIL_BIND="0.0.0.0:8000")
    assert result.returncode == 0
    assert "anvil.W001" in result.stderr + result.stdout


def test_postgres_url_is_parsed_into_django_settings(problems: list[env.SettingProblem],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://anvil:p%40ss@db.internal:6543/anvil?sslmode=require")
    config = env.database_from_url("DATABASE_URL", "sqlite:///x")
    assert problems == []
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "anvil", "p@ss", "db.internal", "6543", "anvil")
    assert config["OPTIONS"] == {"sslmode": "require"}
    assert "p@ss" not in env.describe_database(config)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgres://user@/anvil", "no host"),
        ("postgres://user@db:port/anvil", "port"),
        ("postgres://user@db:5432", "no database name"),
        ("sqlite://relative.sqlite3", "three slashes"),
        ("nonsense", "unsupported scheme"),
    ],
)
def test_malformed_database_urls_are_reported_not_used(problems: list[env.SettingProblem],
                                                       monkeypatch: pytest.MonkeyPatch, url: str, reason: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    config = env.database_from_url("DATABASE_URL", "sqlite:///fallback.sqlite3")
    assert config == env.UNUSABLE_DATABASE  # never a silent fallback to another database
    assert [p.check_id for p in problems] == ["anvil.E001"]
    assert reason in problems[0].message


@pytest.mark.parametrize("raw", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "example.com:80"])
def test_bad_bind_addresses_are_errors(problems: list[env.SettingProblem], monkeypatch: pytest.MonkeyPatch,
                                       raw: str) -> None:
    monkeypatch.setenv("ANVIL_BIND", raw)
    bind = env.bind_address("ANVIL_BIND", "127.0.0.1:8000")
    assert (bind.host, bind.port) == ("127.0.0.1", 8000)
    assert [p.check_id for p in problems] == ["anvil.E004"]


def test_bind_address_knows_loopback(problems: list[env.SettingProblem], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANVIL_BIND", "[::1]:9000")
    assert env.bind_address("ANVIL_BIND", "127.0.0.1:8000").is_loopback
    monkeypatch.setenv("ANVIL_BIND", "0.0.0.0:9000")
    public = env.bind_address("ANVIL_BIND", "127.0.0.1:8000")
    assert not public.is_loopback and public.url == "http://127.0.0.1:9000"
    assert problems == []


def test_booleans_accept_common_words_and_reject_the_rest(problems: list[env.SettingProblem],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "yes")
    assert env.env_bool("DEBUG", False) is True
    monkeypatch.setenv("DEBUG", "perhaps")
    assert env.env_bool("DEBUG", False) is False
    assert [(p.check_id, p.variable) for p in problems] == [("anvil.E005", "DEBUG")]


def test_embedded_secret_key_is_generated_once_and_kept_private(problems: list[env.SettingProblem],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    key_file = tmp_path / "secret_key"
    first = env.secret_key("DJANGO_SECRET_KEY", key_file)
    second = env.secret_key("DJANGO_SECRET_KEY", key_file)
    assert first == second and len(first) >= env.SECRET_KEY_MIN_LENGTH
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert problems == []


def test_a_weak_secret_key_is_an_error(problems: list[env.SettingProblem], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.setenv("DJANGO_SECRET_KEY", "changeme")
    env.secret_key("DJANGO_SECRET_KEY", tmp_path / "unused")
    assert [p.check_id for p in problems] == ["anvil.E003"]


def test_redis_unix_socket_urls_become_kombu_socket_urls() -> None:
    assert env.kombu_url("unix:///var/run/redis.sock") == "redis+socket:///var/run/redis.sock"
    assert env.kombu_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert env.describe_redis("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"


@pytest.mark.parametrize(("raw", "ok"), [("cpu", True), ("cuda", True), ("cuda:1", True), ("mps", True),
                                         ("gpu", False), ("cuda:x", False), ("", False)])
def test_a_torch_device_is_checked(problems: list[env.SettingProblem], monkeypatch: pytest.MonkeyPatch, raw: str,
                                   ok: bool) -> None:
    monkeypatch.setenv("ANVIL_DEVICE", raw)
    device = env.env_device("ANVIL_DEVICE", "cpu")
    assert device == (raw if ok else "cpu")
    assert [p.check_id for p in problems] == ([] if ok else ["anvil.E010"])


@pytest.mark.parametrize(("raw", "chosen"), [("uvicorn", "uvicorn"), (" Daphne ", "daphne"), ("", "uvicorn"),
                                             ("gunicorn", None)])
def test_the_web_server_is_one_of_its_choices(problems: list[env.SettingProblem], monkeypatch: pytest.MonkeyPatch,
                                              raw: str, chosen: str | None) -> None:
    monkeypatch.setenv("ANVIL_WEB_SERVER", raw)
    server = env.env_choice("ANVIL_WEB_SERVER", "uvicorn", ("uvicorn", "daphne"))
    assert server == (chosen or "uvicorn")
    assert [p.check_id for p in problems] == ([] if chosen else ["anvil.E011"])
