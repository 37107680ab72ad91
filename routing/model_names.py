"""What a model name in a request means: which serves may answer it, and in which order.

A request naming a model is answered by that model: its replicas (serves sharing the alias), and
only then by the models its serves list in ``fallback_to``, in that order. Anything else would be a
different answer under the asked-for name (a request for ``ghost`` once got ``hrm-demo``'s).

A name resolves, first match wins: a serve's alias (or its name when it has none) -> every serve
carrying it; a serve's own name -> that serve's alias group; an upstream model id (``served_model``)
-> the serves that serve it. Replicas are ordered by residency, then by requests in flight (the least
busy first: balancing identical backends by load, not round robin), then by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serves.catalog import ServeView


@dataclass(frozen=True)
class NamedModel:
    model: str  # the public id the name resolved to
    replicas: tuple[ServeView, ...]
    fallbacks: tuple[ServeView, ...] = ()  # from the replicas' fallback_to, in order; never a replica

    @property
    def order(self) -> dict[str, int]:
        """Serve name -> rank: replicas first, then each fallback model in the order it was listed."""
        ranks = {serve.name: 0 for serve in self.replicas}
        for serve in self.fallbacks:
            ranks.setdefault(serve.name, 1 + self._fallback_rank(serve))
        return ranks

    def _fallback_rank(self, serve: ServeView) -> int:
        listed = [name for replica in self.replicas for name in replica.fallback_to]
        for index, name in enumerate(listed):
            if name in (serve.model, serve.name, serve.served_model):
                return index
        return len(listed)


def replicas_of(name: str, serves: tuple[ServeView, ...]) -> tuple[ServeView, ...]:
    by_alias = tuple(s for s in serves if s.model == name)
    if by_alias:
        return by_alias
    own = next((s for s in serves if s.name == name), None)
    if own is not None:
        return tuple(s for s in serves if s.model == own.model)
    return tuple(s for s in serves if s.served_model == name)


def resolve(name: str, serves: tuple[ServeView, ...]) -> NamedModel | None:
    """The serves that may answer a request naming ``name``; None when no serve carries it."""
    replicas = replicas_of(name, serves)
    if not replicas:
        return None
    seen = {serve.name for serve in replicas}
    fallbacks: list[ServeView] = []
    for listed in dict.fromkeys(name for replica in replicas for name in replica.fallback_to):
        for serve in replicas_of(listed, serves):
            if serve.name not in seen:
                seen.add(serve.name)
                fallbacks.append(serve)
    return NamedModel(replicas[0].model, replicas, tuple(fallbacks))


def by_availability(serves: list[ServeView], loads: Mapping[str, int]) -> list[ServeView]:
    """Loaded before loading-on-demand; then the fewest requests in flight; then by name."""
    return sorted(serves, key=lambda s: (not s.loaded, loads.get(s.name, 0), s.name))
