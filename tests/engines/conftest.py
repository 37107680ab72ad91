"""Real engines (vLLM on the CPU, llama.cpp's server) behind Anvil as a fresh install runs it.

The engines are package fixtures from tests/support/engines.py, started once for every module here:
put tests that need a real engine in this package, so they share the one vLLM (a minute or more to
start). ``vllm_engine`` and ``llama_cpp_engine`` yield an EnginePeer (``base_url`` ending in /v1,
``served_model``); ``tests.engines.registration.register`` adds one to Anvil as a Serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.keys import create_key
from tests.support.engines import llama_cpp_engine, vllm_engine  # noqa: F401  (package fixtures)
from tests.support.live import live_anvil


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[str]:
    """Anvil under Daphne with its default settings and no quality profile: a fresh install."""
    with live_anvil(module_logs) as url:
        yield url


@pytest.fixture
def key() -> str:
    return create_key("engine-tests").secret
