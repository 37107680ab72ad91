"""The console's charts as inline SVG drawn on the server (the eval pages' and the traffic page's).

No script and no CDN (an operator's browser may have no network), nothing to
load after the page, and the same numbers always give the same bytes, which is
what lets tests read a chart. Every bar carries its numbers as ``data-*``
attributes and a tooltip; the pages put the same numbers in a table beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Series colours, in order: blue, amber, red, green, violet (the console's own palette first).
PALETTE = ("#3b5bdb", "#b54708", "#b42318", "#1f7a3d", "#7048e8")
INK, MUTED, GRID = "#1d2330", "#5b6475", "#d9dee8"
WIDTH, HEIGHT = 480, 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 46, 44
MAX_LABEL_CHARS = 14
# Enough bins to show a shape, few enough that each holds something: sqrt(n), within these bounds.
MIN_BINS, MAX_BINS = 5, 20


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[float | None, ...]  # one per category; None: not measured


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int


# --- numbers ------------------------------------------------------------------
def fmt(value: float) -> str:
    """A number as a person reads it on a chart: three or so significant figures, no exponent."""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    if size == 0:
        return "0"
    return f"{value:.3g}"


def nice_step(span: float, parts: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) that cuts ``span`` into about ``parts``."""
    raw = span / max(parts, 1)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * magnitude * (1 + 1e-9):
            return multiple * magnitude
    return 10 * magnitude


def axis_ticks(highest: float, parts: int = 5) -> list[float]:
    """Ticks from 0 to a round number at or above ``highest``."""
    if highest <= 0 or not math.isfinite(highest):
        return [0.0, 1.0]
    step = nice_step(highest, parts)
    count = math.ceil(highest / step - 1e-9)
    return [_multiple(i, step) for i in range(count + 1)]


def _multiple(index: int, step: float) -> float:
    """``index * step`` without float noise (3 * 0.1 is 0.3, not 0.30000000000000004), at any scale."""
    return round(index * step, max(0, 6 - math.floor(math.log10(step))))


def histogram_bins(values: Sequence[float | None]) -> list[Bin]:
    """Values counted into equal bins with round edges; empty for no values."""
    found = sorted(v for v in values if v is not None and math.isfinite(v))
    if not found:
        return []
    low, high = found[0], found[-1]
    if high == low:
        return [Bin(low, high, len(found))]
    step = nice_step(high - low, min(MAX_BINS, max(MIN_BINS, math.ceil(math.sqrt(len(found))))))
    first = math.floor(low / step + 1e-9)
    counts = [0] * (math.floor(high / step + 1e-9) - first + 1)
    for value in found:
        counts[min(math.floor(value / step + 1e-9) - first, len(counts) - 1)] += 1
    return [Bin(_multiple(first + i, step), _multiple(first + i + 1, step), count) for i, count in enumerate(counts)]


# --- drawing ------------------------------------------------------------------
def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _frame(title: str, ticks: list[float], unit: str) -> list[str]:
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text x="{MARGIN_LEFT}" y="18" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>']
    for tick in ticks:
        y = MARGIN_TOP + plot_h - tick / ticks[-1] * plot_h
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{GRID}" stroke-width="1"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{MUTED}">{escape(fmt(tick))}</text>')
    parts.append(f'<text x="12" y="{MARGIN_TOP + plot_h / 2:.1f}" font-size="11" fill="{MUTED}" '
                 f'text-anchor="middle" transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2:.1f})">{escape(unit)}</text>')
    return parts


def bar_chart(title: str, categories: Sequence[str], series: Sequence[Series], *, unit: str) -> SafeString:
    """Bars per category, one per series side by side (a legend when there are several)."""
    highest = max((v for s in series for v in s.values if v is not None), default=0.0)
    ticks = axis_ticks(highest)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    band = plot_w / max(len(categories), 1)
    bar_w = band * 0.7 / max(len(series), 1)
    parts = _frame(title, ticks, unit)
    for index, category in enumerate(categories):
        left = MARGIN_LEFT + index * band + band * 0.15
        for number, one in enumerate(series):
            value = one.values[index] if index < len(one.values) else None
            x = left + number * bar_w
            if value is None:
                parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{MARGIN_TOP + plot_h - 4:.1f}" font-size="10" '
                             f'text-anchor="middle" fill="{MUTED}">n/a</text>')
                continue
            h = value / ticks[-1] * plot_h
            colour = PALETTE[number % len(PALETTE)]
            tip = f"{category} · {one.name}: {fmt(value)} {unit}"
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{MARGIN_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{colour}" data-category="{escape(category)}" '
                         f'data-series="{escape(one.name)}" data-value="{value!r}">'
                         f"<title>{escape(tip)}</title></rect>")
            if len(series) == 1:
                parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{MARGIN_TOP + plot_h - h - 4:.1f}" font-size="11" '
                             f'text-anchor="middle" fill="{INK}">{escape(fmt(value))}</text>')
        parts.append(f'<text x="{MARGIN_LEFT + index * band + band / 2:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" '
                     f'font-size="11" text-anchor="middle" fill="{INK}">{escape(_label(category))}</text>')
    if len(series) > 1:  # the legend: a row under the title
        x = MARGIN_LEFT
        for number, one in enumerate(series):
            parts.append(f'<rect x="{x}" y="25" width="10" height="10" fill="{PALETTE[number % len(PALETTE)]}"/>'
                         f'<text x="{x + 14}" y="34" font-size="11" fill="{INK}">{escape(one.name)}</text>')
            x += 14 + 7 * len(one.name) + 16
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every piece of text above went through escape()


def histogram(title: str, bins: Sequence[Bin], *, unit: str) -> SafeString:
    """Counts per bin as adjacent bars, the bin edges along the bottom."""
    ticks = axis_ticks(max((b.count for b in bins), default=0))
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    width = plot_w / max(len(bins), 1)
    parts = _frame(title, ticks, "results")
    every = math.ceil(len(bins) / 8) if bins else 1  # at most about eight edge labels
    for index, one in enumerate(bins):
        x = MARGIN_LEFT + index * width
        h = one.count / ticks[-1] * plot_h
        span = f"{fmt(one.low)}–{fmt(one.high)} {unit}" if one.high > one.low else f"{fmt(one.low)} {unit}"
        parts.append(f'<rect class="bar" x="{x + 1:.1f}" y="{MARGIN_TOP + plot_h - h:.1f}" '
                     f'width="{max(width - 2, 1):.1f}" height="{h:.1f}" fill="{PALETTE[0]}" '
                     f'data-low="{one.low!r}" data-high="{one.high!r}" data-value="{one.count}">'
                     f"<title>{escape(span)}: {one.count}</title></rect>")
        if index % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" font-size="11" text-anchor="middle" '
                         f'fill="{INK}">{escape(fmt(one.low))}</text>')
    if bins:
        parts.append(f'<text x="{MARGIN_LEFT + plot_w:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" font-size="11" '
                     f'text-anchor="end" fill="{INK}">{escape(fmt(bins[-1].high))}</text>')
    parts.append(f'<text x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle" '
                 f'fill="{MUTED}">{escape(unit)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every piece of text above went through escape()


def line_chart(title: str, times: Sequence[str], series: Sequence[Series], *, unit: str) -> SafeString:
    """Values over time, a line per series (a gap where a value is None), the first and last times below."""
    highest = max((v for s in series for v in s.values if v is not None), default=0.0)
    ticks = axis_ticks(highest)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    step = plot_w / max(len(times) - 1, 1)
    parts = _frame(title, ticks, unit)
    for number, one in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for index, value in enumerate(one.values):
            if value is None:
                runs.append([])
                continue
            x, y = MARGIN_LEFT + index * step, MARGIN_TOP + plot_h - value / ticks[-1] * plot_h
            runs[-1].append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}" '
                         f'data-series="{escape(one.name)}" data-time="{escape(times[index])}" data-value="{value!r}">'
                         f"<title>{escape(times[index])} · {escape(one.name)}: {escape(fmt(value))} {escape(unit)}"
                         "</title></circle>")
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    if times:
        parts.append(f'<text x="{MARGIN_LEFT}" y="{HEIGHT - MARGIN_BOTTOM + 16}" font-size="11" fill="{INK}">'
                     f"{escape(times[0])}</text>")
        parts.append(f'<text x="{WIDTH - MARGIN_RIGHT}" y="{HEIGHT - MARGIN_BOTTOM + 16}" font-size="11" '
                     f'text-anchor="end" fill="{INK}">{escape(times[-1])}</text>')
    if len(series) > 1:
        x = MARGIN_LEFT
        for number, one in enumerate(series):
            parts.append(f'<rect x="{x}" y="25" width="10" height="10" fill="{PALETTE[number % len(PALETTE)]}"/>'
                         f'<text x="{x + 14}" y="34" font-size="11" fill="{INK}">{escape(_label(one.name))}</text>')
            x += 14 + 7 * len(_label(one.name)) + 16
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every piece of text above went through escape()
