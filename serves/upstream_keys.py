"""Which environment variable may hold a serve's upstream key (``Serve.api_key_env``).

A serve names the variable, never the key, and Anvil sends that variable's value
upstream as a bearer token. Any name would let a serve send any secret of this
process to any URL (``api_key_env = "DATABASE_URL"`` sent the database password to
the upstream), so only names made for the purpose are allowed:
``ANVIL_UPSTREAM_KEY_<NAME>`` and ``<NAME>_API_KEY`` (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``), and never one of Anvil's own settings.

The manifest import, the admin form, the model's validation, the system check
``anvil.E009`` and every place that reads the key (``read_upstream_key``) use the
same rule, so a row written before the rule existed is refused as well.
"""

from __future__ import annotations

import os
import re

from django.core.exceptions import ValidationError

UPSTREAM_KEY_PREFIX = "ANVIL_UPSTREAM_KEY_"
API_KEY_SUFFIX = "_API_KEY"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Anvil's own settings outside the ANVIL_ prefix (anvil_site/settings.py reads them).
_OWN_SETTINGS = frozenset({
    "DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE", "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS", "DEBUG",
})
_OWN_PREFIXES = ("ANVIL_", "DJANGO_")
ALLOWED_SHAPES = f"{UPSTREAM_KEY_PREFIX}<NAME> or <NAME>{API_KEY_SUFFIX} (e.g. OPENAI_API_KEY)"


class ForbiddenUpstreamKeyName(ValueError):
    """A serve names a variable that may not be sent upstream."""


def _is_own_setting(name: str) -> bool:
    if name.startswith(UPSTREAM_KEY_PREFIX):
        return False
    return name in _OWN_SETTINGS or name.startswith(_OWN_PREFIXES)


def upstream_key_name_problem(name: str) -> str | None:
    """Why ``name`` may not be a serve's ``api_key_env``; None when it may ("" means no key, and may).

    The messages never repeat the value unless it is one of Anvil's own setting names: an
    operator who pasted the key itself must not see it printed into a log.
    """
    if name == "":
        return None
    if not _IDENTIFIER.fullmatch(name):
        return ("must be the name of an environment variable (letters, digits, underscores), never the key "
                f"itself; name a variable {ALLOWED_SHAPES}.")
    if _is_own_setting(name):
        return (f"names {name}, one of Anvil's own settings, which is never sent upstream; put the upstream key "
                f"in a variable named {ALLOWED_SHAPES}.")
    named_for_keys = (
        (name.startswith(UPSTREAM_KEY_PREFIX) and len(name) > len(UPSTREAM_KEY_PREFIX))
        or (name.endswith(API_KEY_SUFFIX) and len(name) > len(API_KEY_SUFFIX))
    )
    if not named_for_keys:
        return (f"must name a variable made to hold an upstream key: {ALLOWED_SHAPES}; no other variable is "
                "sent upstream.")
    return None


def is_allowed_upstream_key_name(name: str) -> bool:
    """True when ``name`` is a non-empty variable name that may be sent upstream."""
    return bool(name) and upstream_key_name_problem(name) is None


def validate_upstream_key_name(name: str) -> None:
    """Field validator for ``Serve.api_key_env``."""
    problem = upstream_key_name_problem(name)
    if problem is not None:
        raise ValidationError(problem, code="forbidden_upstream_key_name")


def read_upstream_key(name: str) -> str:
    """The upstream key held in variable ``name`` now ("" when ``name`` is blank or the variable unset).

    Raises ForbiddenUpstreamKeyName for a name the rule refuses: a row written before the
    rule existed must not send the variable anyway.
    """
    if not name:
        return ""
    problem = upstream_key_name_problem(name)
    if problem is not None:
        raise ForbiddenUpstreamKeyName(f"api_key_env {problem}")
    return os.environ.get(name, "")


ANTHROPIC_VERSION = "2023-06-01"


def upstream_auth_headers(dialect: str, api_key_env: str) -> dict[str, str]:
    """The headers that authenticate Anvil to an upstream of ``dialect``: the one place the relay and
    the probes build them. The key is read from the environment now, never stored, never logged; a
    name the rule refuses (a row older than the rule; ``anvil.E009`` reports it) sends no key."""
    key = os.environ.get(api_key_env, "") if is_allowed_upstream_key_name(api_key_env) else ""
    if dialect == "anthropic":
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers
    return {"authorization": f"Bearer {key}"} if key else {}
