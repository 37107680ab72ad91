"""System checks for the settings read from the environment (``anvil.E0xx``, ``anvil.W0xx``).

``manage.py check`` lists them; ``fail_fast()`` is what the start-up paths call
(the launcher, ``asgi.py``, the Celery worker) so that a malformed variable stops
Anvil before it serves anything, with a message that names the variable.
"""

from __future__ import annotations

import sys

from django.conf import settings
from django.core import checks

W_PUBLIC_BIND = "anvil.W001"
W_DEBUG_PUBLIC = "anvil.W002"


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


class StartupRefused(SystemExit):
    """Raised (as a SystemExit) when a start-up path finds configuration errors."""


def fail_fast(component: str) -> None:
    """Run the anvil checks; print every error and exit when any is serious."""
    found = checks.run_checks(tags=["anvil"])
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
