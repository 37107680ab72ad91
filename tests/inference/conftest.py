from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import live_anvil, scripted_upstream


@pytest.fixture(scope="module")
def upstream(module_logs: Path) -> Iterator[str]:
    """A scripted OpenAI- and Anthropic-compatible server (real process)."""
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, django_db_blocker: object, module_logs: Path) -> Iterator[str]:
    """Anvil under its web server (real process) on the test database."""
    # First-byte clocks of 2 s (a silent serve is a quick 504); the [[slow]] streams that hold
    # slots open stay silent 30 s between tokens, so the inter-token clock keeps its default.
    with live_anvil(module_logs, ANVIL_MAX_CONCURRENCY_PER_KEY="3", ANVIL_UPSTREAM_FIRST_BYTE_TIMEOUT="2",
                    ANVIL_UPSTREAM_WHOLE_ANSWER_TIMEOUT="2", ANVIL_MAX_BODY_BYTES="65536") as url:
        yield url
