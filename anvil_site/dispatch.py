"""Which ASGI application answers an HTTP path.

Exact paths first (a dict lookup; a trailing slash is forgiven, as clients and proxies add one),
then prefixes, then Django. The matched route's label is stored in the scope for the metrics
middleware.
"""

from __future__ import annotations

from typing import Any

Asgi = Any


class PathDispatcher:
    def __init__(self, exact: dict[str, Asgi], prefixes: list[tuple[str, Asgi]], fallback: Asgi,
                 fallback_groups: tuple[str, ...] = ()) -> None:
        self.exact = exact
        self.prefixes = prefixes
        self.fallback = fallback
        self.fallback_groups = fallback_groups

    def resolve(self, path: str) -> tuple[str, Asgi]:
        app = self.exact.get(path)
        if app is not None:
            return path, app
        if path.endswith("/") and (app := self.exact.get(path.rstrip("/"))) is not None:
            return path.rstrip("/"), app
        for prefix, app in self.prefixes:
            if path.startswith(prefix):
                return prefix + "*", app
        for group in self.fallback_groups:
            if path.startswith(group):
                return group + "*", self.fallback
        return ("/" if path == "/" else "django:other"), self.fallback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route, app = self.resolve(scope["path"])
        if route in self.exact and route != scope["path"]:
            scope = {**scope, "path": route}  # /v1/chat/completions/ is /v1/chat/completions
        scope["anvil.route"] = route
        await app(scope, receive, send)
