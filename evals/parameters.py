"""Checking a run's parameters, shared by every runner's ``clean_parameters``: each refusal names
the parameter and what it accepts, before any run exists."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evals.errors import BadParameters


def reject_unknown(kind: str, parameters: dict[str, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise BadParameters(f"unknown {kind} parameter(s): {', '.join(unknown)}", hint=f"known: {', '.join(known)}")


def from_options(options: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The command-line options a runner knows, as JSON-able run parameters (paths as strings)."""
    return {name: str(options[name]) if isinstance(options[name], Path) else options[name]
            for name in names if options.get(name) is not None}


def whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadParameters(f"{name} is a whole number from {low} to {high}, not {value!r}")
    return value


def number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadParameters(f"{name} is a number from {low:g} to {high:g}, not {value!r}")
    return float(value)
