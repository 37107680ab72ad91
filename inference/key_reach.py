"""What a key may use: its reach (glob patterns over models, serves and tiers) and the metered tiers behind
``allow_remote`` (docs/keys.md).

A serve is within reach when any of the key's patterns matches its public model id, its name, its upstream
model id, or ``tier:<its tier>`` (``fnmatch`` globs, case-sensitive); a key with no patterns reaches every
serve. A metered tier (``ANVIL_METERED_TIERS``) also needs ``allow_remote``: the key's, narrowed by the
request's own ``allow_remote`` field (llm-pool's gate), which can turn it off but never on.

Reach filters the serves before routing decides, so ``auto`` and presets route over what the key may use,
a fallback outside it is never tried, and a model named outside it is a 403 ``model_not_allowed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from inference.auth import Principal
from inference.errors import InvalidRequest
from routing.profile import is_metered
from serves.catalog import ServeView

REQUEST_FLAG = "allow_remote"


@dataclass(frozen=True)
class KeyReach:
    patterns: tuple[str, ...] = ()
    remote: bool = True

    @property
    def unrestricted(self) -> bool:
        return not self.patterns and self.remote

    def refuses(self, serve: ServeView) -> str | None:
        """Why the key may not use ``serve``, or None."""
        if not self.remote and is_metered(serve):
            return f"tier {serve.tier} is metered, and allow_remote is off for this key or request"
        if self.patterns and not any(fnmatchcase(name, pattern) for pattern in self.patterns
                                     for name in (serve.model, serve.name, serve.served_model, f"tier:{serve.tier}")):
            return "outside this key's reach"
        return None


def reach_of(principal: Principal | None, body: dict[str, Any]) -> KeyReach:
    """The key's reach, narrowed by the request's ``allow_remote`` (never widened)."""
    asked = body.get(REQUEST_FLAG)
    if asked is not None and not isinstance(asked, bool):
        raise InvalidRequest("allow_remote is true or false.", param=REQUEST_FLAG)
    remote = (principal.allow_remote if principal is not None else True) and asked is not False
    return KeyReach(principal.reach if principal is not None else (), remote)


def within(serves: tuple[ServeView, ...], reach: KeyReach) -> tuple[tuple[ServeView, ...], dict[str, str]]:
    """(the serves the key may use, why each other one is refused)."""
    if reach.unrestricted:
        return serves, {}
    allowed, refused = [], {}
    for serve in serves:
        why = reach.refuses(serve)
        if why is None:
            allowed.append(serve)
        else:
            refused[serve.name] = why
    return tuple(allowed), refused
