"""Typed readers for the environment variables that configure Anvil.

Every reader returns a usable value and, when the variable is malformed,
records a ``SettingProblem`` instead of raising: settings must import so that
Django can run its system checks, and the checks (``anvil_site.checks``) turn
each problem into an error with a stable id (``anvil.E001`` …) that names the
variable. Start-up paths (the launcher, ``asgi.py``, the Celery worker) refuse
to go on while any error stands.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

# Check ids, one per variable, so an operator can grep the docs for them.
E_DATABASE_URL = "anvil.E001"
E_REDIS_URL = "anvil.E002"
E_SECRET_KEY = "anvil.E003"
E_BIND = "anvil.E004"
E_BOOLEAN = "anvil.E005"
E_ALLOWED_HOSTS = "anvil.E006"
E_NUMBER = "anvil.E007"
E_VAR_DIR = "anvil.E008"
E_DEVICE = "anvil.E010"
E_CHOICE = "anvil.E011"

SECRET_KEY_MIN_LENGTH = 32


@dataclass(frozen=True)
class SettingProblem:
    check_id: str
    variable: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class BindAddress:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


# Filled while settings import; read by the system checks.
PROBLEMS: list[SettingProblem] = []


def _problem(check_id: str, variable: str, message: str, hint: str = "") -> None:
    PROBLEMS.append(SettingProblem(check_id, variable, message, hint))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    _problem(E_BOOLEAN, name, f"{name}={raw!r} is not a boolean.", "Use one of 1/0, true/false, yes/no, on/off.")
    return default


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        _problem(E_NUMBER, name, f"{name}={raw!r} is not an integer.")
        return default
    if value < minimum:
        _problem(E_NUMBER, name, f"{name}={value} is below the minimum {minimum}.")
        return default
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        _problem(E_NUMBER, name, f"{name}={raw!r} is not a number.")
        return default
    if value < minimum:
        _problem(E_NUMBER, name, f"{name}={value} is below the minimum {minimum}.")
        return default
    return value


def env_device(name: str, default: str) -> str:
    """A torch device: cpu, cuda, cuda:N or mps."""
    raw = os.environ.get(name, default).strip()
    if re.fullmatch(r"cpu|mps|cuda(:\d+)?", raw):
        return raw
    _problem(E_DEVICE, name, f"{name}={raw!r} is not a torch device.", "Use cpu, cuda, cuda:N or mps.")
    return default


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One word out of ``choices`` (case and surrounding spaces ignored)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in choices:
        return word
    _problem(E_CHOICE, name, f"{name}={raw!r} is not one of {', '.join(choices)}.")
    return default


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_address(name: str, default: str) -> BindAddress:
    raw = os.environ.get(name, default).strip()
    fallback_host, _, fallback_port = default.rpartition(":")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        _problem(E_BIND, name, f"{name}={raw!r} is not HOST:PORT.", "Example: 127.0.0.1:8000 or 0.0.0.0:8000.")
        return BindAddress(fallback_host, int(fallback_port))
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        _problem(E_BIND, name, f"{name}={raw!r} has no valid port (1-65535).")
        return BindAddress(fallback_host, int(fallback_port))
    if host not in ("localhost", "0.0.0.0", "::"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _problem(E_BIND, name, f"{name}={raw!r}: {host!r} is not an IP address or 'localhost'.")
            return BindAddress(fallback_host, int(fallback_port))
    return BindAddress(host, port)


SQLITE_SCHEMES = frozenset({"sqlite"})
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "pgsql"})

# A database config that fails on first use: a malformed DATABASE_URL must
# never fall back silently to some other database.
UNUSABLE_DATABASE = {"ENGINE": "django.db.backends.dummy"}


def database_from_url(name: str, default: str) -> dict[str, object]:
    raw = os.environ.get(name, default).strip()
    try:
        config = _parse_database_url(raw)
    except ValueError as exc:
        _problem(
            E_DATABASE_URL,
            name,
            f"{name} is malformed: {exc}",
            "Use sqlite:////absolute/path.sqlite3 or postgres://USER:PASSWORD@HOST:PORT/NAME.",
        )
        return dict(UNUSABLE_DATABASE)
    return config


def _parse_database_url(raw: str) -> dict[str, object]:
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme in SQLITE_SCHEMES:
        # sqlite:///relative.sqlite3 or sqlite:////absolute.sqlite3
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if parts.netloc or not path:
            raise ValueError("a sqlite URL is sqlite:///PATH (three slashes, then the file path)")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path,
            # Daphne, the Celery worker and beat write concurrently: WAL plus a
            # generous busy timeout turns "database is locked" into a short wait.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if scheme in POSTGRES_SCHEMES:
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"the port is not a number ({exc})") from None
        name = unquote(parts.path.lstrip("/"))
        if not parts.hostname:
            raise ValueError("no host (postgres://USER:PASSWORD@HOST:PORT/NAME)")
        if not name or "/" in name:
            raise ValueError("no database name after the host (postgres://…@HOST:PORT/NAME)")
        options: dict[str, object] = {}
        for key, values in parse_qs(parts.query).items():
            options[key] = values[-1]
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname,
            "PORT": str(port or 5432),
            "CONN_MAX_AGE": 0,
            "OPTIONS": options,
        }
    shown = scheme or "(none)"
    raise ValueError(f"unsupported scheme {shown!r}; expected sqlite or postgres")


REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def redis_url(name: str, default: str) -> str:
    raw = os.environ.get(name, default).strip()
    parts = urlsplit(raw)
    problem = None
    if parts.scheme not in REDIS_SCHEMES:
        problem = f"unsupported scheme {parts.scheme or '(none)'!r}; expected redis, rediss or unix"
    elif parts.scheme == "unix" and not parts.path:
        problem = "a unix URL needs a socket path (unix:///path/to/redis.sock)"
    elif parts.scheme != "unix":
        try:
            _ = parts.port  # urlsplit parses the port lazily and raises here
        except ValueError:
            problem = "the port is not a number"
        else:
            if not parts.hostname:
                problem = "no host (redis://HOST:PORT/DB)"
    if problem:
        _problem(E_REDIS_URL, name, f"{name} is malformed: {problem}.", "Example: redis://127.0.0.1:6379/0.")
        return default
    return raw


def kombu_url(url: str) -> str:
    """Celery's (kombu's) spelling of a Redis URL: unix sockets are redis+socket://."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url


def var_dir(name: str, default: Path) -> Path:
    path = Path(os.environ.get(name, str(default))).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _problem(E_VAR_DIR, name, f"{name}={str(path)!r} cannot be created: {exc.strerror}.")
    return path


def secret_key(name: str, key_file: Path) -> str:
    """The secret from the environment, else one generated once and kept in ``key_file``."""
    raw = os.environ.get(name)
    if raw is not None:
        if len(raw) < SECRET_KEY_MIN_LENGTH or len(set(raw)) < 5:
            _problem(
                E_SECRET_KEY,
                name,
                f"{name} is too weak (at least {SECRET_KEY_MIN_LENGTH} characters, not repetitive).",
                "Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'.",
            )
        return raw
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        _problem(E_SECRET_KEY, name, f"{name} is unset and {key_file} cannot be read: {exc.strerror}.")
        return secrets.token_urlsafe(50)
    generated = secrets.token_urlsafe(50)
    try:
        # O_EXCL: when several processes start at once, exactly one writes the
        # file and the others read what it wrote.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    except OSError as exc:
        _problem(E_SECRET_KEY, name, f"{name} is unset and {key_file} cannot be written: {exc.strerror}.")
        return generated
    with os.fdopen(fd, "w") as handle:
        handle.write(generated + "\n")
    return generated


def describe_database(config: dict[str, object]) -> str:
    """A one-line description of a database config, never with its password."""
    engine = str(config.get("ENGINE", ""))
    if engine.endswith("sqlite3"):
        return f"SQLite at {config['NAME']}"
    if engine.endswith("postgresql"):
        return f"PostgreSQL {config.get('USER')}@{config.get('HOST')}:{config.get('PORT')}/{config.get('NAME')}"
    return "unusable (see the DATABASE_URL check)"


def describe_redis(url: str) -> str:
    """A Redis URL with any password replaced."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
