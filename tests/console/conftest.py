from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import scripted_upstream


@pytest.fixture(scope="module")
def upstream(module_logs: Path) -> Iterator[str]:
    """A scripted OpenAI- and Anthropic-compatible server (real process)."""
    with scripted_upstream(module_logs) as url:
        yield url
