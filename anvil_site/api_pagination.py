"""The REST API's pagination: DRF's limit/offset, with a ceiling on ``?limit=``."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's LimitOffsetPagination has no ceiling: a ``?limit=`` past a 64-bit integer reached the database
    as a LIMIT it cannot hold (a 500 on SQLite and on PostgreSQL). A larger limit is clamped to this one."""

    max_limit = 1000
