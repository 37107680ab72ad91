"""Small combinators that check the shape of parsed JSON, naming the field at fault.

A check is a callable ``(value, where) -> None`` that raises ``ShapeError`` with the dotted path
of the first value that is wrong (``messages[2].content[0].text``). Only the fields a schema names
are checked; every other field travels on untouched, so a client's vendor extensions still reach
the upstream. ``None`` (JSON null) counts as absent for optional fields, as the SDKs send it.

Used for what clients send the front door and for what upstreams send back: one vocabulary, so a
malformed body is refused in one place before any code that would trip over it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Check = Callable[[Any, str], None]

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ShapeError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"'{where}' {message}")
        self.where = where
        self.message = f"'{where}' {message}"


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def anything(value: Any, where: str) -> None:
    return None


def string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise ShapeError(where, "must be a string.")


def boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise ShapeError(where, "must be true or false.")


def mapping(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ShapeError(where, "must be an object.")


def integer(low: int = INT64_MIN, high: int = INT64_MAX) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ShapeError(where, f"must be an integer from {low} to {high}.")

    return check


def number(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(value: Any, where: str) -> None:
        # NaN compares false with everything, so the range test refuses it (and the infinities). The range test
        # comes first: math.isfinite raises OverflowError on an integer past a float's range (10**400).
        if (isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
                or not math.isfinite(value) or (low_open and value == low)):
            bracket = "(" if low_open else "["
            raise ShapeError(where, f"must be a number in {bracket}{low:g}, {high:g}].")

    return check


def one_of(*choices: str) -> Check:
    allowed = frozenset(choices)

    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise ShapeError(where, f"must be one of {', '.join(sorted(allowed))}.")

    return check


def list_of(item: Check, *, min_items: int = 0, max_items: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise ShapeError(where, "must be a list.")
        if len(value) < min_items:
            raise ShapeError(where, "must not be empty." if min_items == 1 else f"needs {min_items} items at least.")
        if max_items is not None and len(value) > max_items:
            raise ShapeError(where, f"may hold at most {max_items} items.")
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")

    return check


def by_kind(kinds: Mapping[type, Check], what: str) -> Check:
    """Dispatch on the JSON kind: ``{str: string, list: list_of(part)}`` for "a string or a list"."""

    def check(value: Any, where: str) -> None:
        for kind, inner in kinds.items():
            if isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
                inner(value, where)
                return
        raise ShapeError(where, f"must be {what}.")

    return check


def fields(spec: Mapping[str, Check], *, required: Iterable[str] = ()) -> Check:
    """An object whose named fields, when present and not null, pass their checks."""
    needed = tuple(required)
    items = tuple(spec.items())

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ShapeError(where or "body", "must be an object.")
        for name in needed:
            if value.get(name) is None:
                raise ShapeError(_join(where, name), "is required.")
        for name, inner in items:
            field = value.get(name)
            if field is not None:
                inner(field, _join(where, name))

    return check


def tagged(variants: Mapping[str, Check], *, tag: str = "type", others: bool = True) -> Check:
    """An object told apart by a string ``type``; known types get their own checks. ``others``:
    whether a type this schema does not know is let through (for the upstream to judge)."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ShapeError(where, "must be an object.")
        kind = value.get(tag)
        if not isinstance(kind, str):
            raise ShapeError(_join(where, tag), "must be a string.")
        inner = variants.get(kind)
        if inner is not None:
            inner(value, where)
        elif not others:
            raise ShapeError(_join(where, tag), f"must be one of {', '.join(sorted(variants))}.")

    return check
