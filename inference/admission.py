"""Concurrency caps of the front door (per web process): a whole-process cap and a per-key cap.

Over a cap the request is answered 429 at once, with Retry-After, rather than
queued: a client's retry policy is better at waiting than a growing queue.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from inference.errors import RateLimited

RETRY_AFTER = [(b"retry-after", b"1")]


class Admission:
    def __init__(self) -> None:
        self.in_flight = 0
        self.per_key: defaultdict[int, int] = defaultdict(int)

    @contextmanager
    def admit(self, key_id: int | None) -> Iterator[None]:
        if self.in_flight >= settings.ANVIL_MAX_CONCURRENCY:
            raise RateLimited(f"Anvil is answering {self.in_flight} requests, its limit "
                              "(ANVIL_MAX_CONCURRENCY); retry shortly.", headers=RETRY_AFTER)
        if key_id is not None and self.per_key[key_id] >= settings.ANVIL_MAX_CONCURRENCY_PER_KEY:
            raise RateLimited(f"This API key has {self.per_key[key_id]} requests in flight, its limit "
                              "(ANVIL_MAX_CONCURRENCY_PER_KEY); retry when one finishes.", headers=RETRY_AFTER)
        self.in_flight += 1
        if key_id is not None:
            self.per_key[key_id] += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if key_id is not None:
                self.per_key[key_id] -= 1
                if not self.per_key[key_id]:
                    del self.per_key[key_id]


ADMISSION = Admission()
