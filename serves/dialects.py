"""The protocols Anvil speaks: the one enum every layer uses (no Django, so the wire code can import it)."""

from __future__ import annotations

from enum import StrEnum


class Dialect(StrEnum):
    """A serve speaks OpenAI or Anthropic; a client may also speak the in-worker engine's own protocol."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    NATIVE = "native"  # the in-worker engine's /generate and /loglikelihood: {"detail", "field"}


SERVE_DIALECTS = [(Dialect.OPENAI.value, "OpenAI"), (Dialect.ANTHROPIC.value, "Anthropic")]
