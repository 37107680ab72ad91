"""System checks for the settings read from the environment (``anvil.E0xx``, ``anvil.W0xx``).

``manage.py check`` lists them; ``fail_fast()`` is what the start-up paths call
(the launcher, ``asgi.py``, the Celery worker) so that a malformed variable stops
Anvil before it serves anything, with a message that names the variable.

``anvil.E009`` looks at rows, not variables: following Django's convention for
checks that read the database, it runs only when asked for a database
(``manage.py check --database default``, and ``fail_fast``), so the commands that
repair a row (``serves import``) are never blocked by it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

W_PUBLIC_BIND = "anvil.W001"
W_DEBUG_PUBLIC = "anvil.W002"
E_UPSTREAM_KEY_NAME = "anvil.E009"


@checks.register("anvil")
def environment_problems(app_configs: object = None, **kwargs: object) -> list[checks.CheckMessage]:
    return [
        checks.Error(problem.message, hint=problem.hint or None, id=problem.check_id)
        for problem in settings.ANVIL_SETTING_PROBLEMS
    ]


@checks.register("anvil")
def allowed_hosts(app_configs: object = None, **kwargs: object) -> list[checks.CheckMessage]:
    if settings.ALLOWED_HOSTS:
        return []
    return [
        checks.Error(
            "ALLOWED_HOSTS is empty: every browser request would be refused.",
            hint="Set ALLOWED_HOSTS to the host names operators use, comma-separated.",
            id="anvil.E006",
        )
    ]


@checks.register("anvil")
def public_bind(app_configs: object = None, **kwargs: object) -> list[checks.CheckMessage]:
    bind = settings.ANVIL_BIND
    if bind.is_loopback:
        return []
    found = [
        checks.Warning(
            f"ANVIL_BIND={bind.host}:{bind.port} listens beyond this machine.",
            hint="Anyone who can reach this address can try API keys and the admin login. "
            "Put Anvil behind TLS, set ALLOWED_HOSTS, and keep API keys secret.",
            id=W_PUBLIC_BIND,
        )
    ]
    if settings.DEBUG:
        found.append(
            checks.Warning(
                "DEBUG is on while listening beyond loopback: error pages show settings and code.",
                hint="Unset DEBUG (it is off by default).",
                id=W_DEBUG_PUBLIC,
            )
        )
    return found


@checks.register("anvil", checks.Tags.database)
def upstream_key_names(app_configs: object = None, databases: Sequence[str] | None = None,
                       **kwargs: object) -> list[checks.CheckMessage]:
    """Serves whose api_key_env names a variable that may not be sent upstream (rows older than the rule)."""
    if not databases:
        return []
    from serves.models import Serve  # models are loaded by the time checks run, not when this module imports
    from serves.upstream_keys import ALLOWED_SHAPES, upstream_key_name_problem

    found: list[checks.CheckMessage] = []
    for alias in databases:
        try:
            rows = list(Serve.objects.using(alias).exclude(api_key_env="").order_by("name")
                        .values_list("name", "api_key_env"))
        except (DatabaseError, ImproperlyConfigured):
            # Not migrated yet (the launcher checks before it migrates), or unusable, which
            # anvil.E001 reports: no rows to judge.
            continue
        for name, variable in rows:
            problem = upstream_key_name_problem(variable)
            if problem is None:
                continue
            found.append(checks.Error(
                f"serve {name!r}: api_key_env {problem}",
                hint=f"Rename the variable ({ALLOWED_SHAPES}) and update the serve: `python manage.py serves "
                "import FILE` or the admin. Anvil never sends this variable upstream.",
                id=E_UPSTREAM_KEY_NAME,
            ))
    return found


class StartupRefused(SystemExit):
    """Raised (as a SystemExit) when a start-up path finds configuration errors."""


def fail_fast(component: str) -> None:
    """Run the anvil checks; print every error and exit when any is serious."""
    found = checks.run_checks(tags=["anvil"], databases=list(connections))
    # The row checks opened a connection in this (the main) thread; Daphne's and Celery's
    # database work happens in other threads, so do not leave it idle for the life of the
    # process (one inside a transaction belongs to a caller, e.g. a test: leave that alone).
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
    errors = [message for message in found if message.is_serious()]
    for message in found:
        if not message.is_serious() and not message.is_silenced():
            print(f"WARNING {message.id}: {message.msg}\n  {message.hint or ''}", file=sys.stderr)
    if errors:
        lines = [f"{component} refuses to start; fix the configuration:"]
        for message in errors:
            lines.append(f"  {message.id}: {message.msg}")
            if message.hint:
                lines.append(f"      {message.hint}")
        print("\n".join(lines), file=sys.stderr)
        raise StartupRefused(2)
