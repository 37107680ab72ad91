"""The wire protocol, in one home: what clients and upstreams say, and how one dialect becomes another.

* ``requests``: the shape of each front-door request, checked before anything reads it;
* ``upstream``: the shape of what an upstream answers, checked before anything translates it;
* ``sse``: server-sent events, decoded whole and encoded;
* ``anthropic_client`` / ``openai_client``: an Anthropic client served by an OpenAI upstream, and
  the reverse; ``answers``: any answer reduced to what the verifiers judge;
* ``error_bodies``: the front door's errors in each client dialect, whole and as a stream's last event.

Pure functions and small state machines: no I/O, no Django.
"""

from __future__ import annotations

from serves.dialects import Dialect

__all__ = ["Dialect", "DialectError", "UpstreamProtocolError"]


class DialectError(ValueError):
    """A request that cannot be expressed in the upstream's dialect; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UpstreamProtocolError(ValueError):
    """The upstream answered something its own dialect does not allow."""
