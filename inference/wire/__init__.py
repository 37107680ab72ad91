"""The two client dialects (OpenAI, Anthropic): SSE framing and translation between them.

Pure functions and small state machines; no I/O, no Django. ``anthropic_client``
serves an Anthropic client from an OpenAI upstream; ``openai_client`` serves an
OpenAI client from an Anthropic upstream.
"""

from __future__ import annotations


class DialectError(ValueError):
    """A request that cannot be expressed in the upstream's dialect; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class UpstreamProtocolError(ValueError):
    """The upstream answered something its own dialect does not allow."""
