from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import live_anvil, scripted_upstream


@pytest.fixture(scope="module")
def good_upstream(module_logs: Path) -> Iterator[str]:
    with scripted_upstream(module_logs) as url:
        yield url


@pytest.fixture(scope="module")
def bad_upstreams(module_logs: Path) -> Iterator[dict[str, str]]:
    """One upstream per way of failing: every request it gets fails that way."""
    with scripted_upstream(module_logs, force_scenario="error500") as error500, \
            scripted_upstream(module_logs, force_scenario="truncated") as truncated, \
            scripted_upstream(module_logs, force_scenario="badjson") as badjson:
        yield {"error500": error500, "truncated": truncated, "badjson": badjson}


@pytest.fixture(scope="module")
def anvil(django_db_setup: None, module_logs: Path) -> Iterator[str]:
    with live_anvil(module_logs) as url:
        yield url
