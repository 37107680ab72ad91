"""The console's server-drawn SVG charts: round axes, honest bins, escaped labels, the same bytes every time."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from console.charts import Series, axis_ticks, bar_chart, fmt, histogram, histogram_bins, nice_step


def test_axes_end_on_round_numbers_at_or_above_the_highest_value() -> None:
    assert axis_ticks(410.2) == [0, 100, 200, 300, 400, 500]
    assert axis_ticks(3.5) == [0, 1, 2, 3, 4]
    assert axis_ticks(0.9) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert axis_ticks(0) == [0, 1]
    assert nice_step(10, 4) == 2.5 and nice_step(0.3, 6) == 0.05


def test_numbers_read_as_people_write_them() -> None:
    assert [fmt(v) for v in (1234.5, 410.2, 3.5, 2.0, 0.0, 0.0123)] == ["1,234", "410", "3.5", "2", "0", "0.0123"]


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=300))
def test_every_value_lands_in_exactly_one_bin_and_the_bins_cover_them_all(values: list[float]) -> None:
    bins = histogram_bins(values)
    assert sum(b.count for b in bins) == len(values)
    assert bins[0].low <= min(values) and bins[-1].high >= max(values)
    assert all(a.high == b.low for a, b in zip(bins, bins[1:], strict=False))  # adjacent, no gaps
    assert len(bins) <= 40


def test_one_repeated_value_is_one_bin_and_no_values_no_bins() -> None:
    assert [(b.low, b.high, b.count) for b in histogram_bins([0.5, 0.5, 0.5])] == [(0.5, 0.5, 3)]
    assert histogram_bins([]) == [] and histogram_bins([None]) == []


def test_charts_are_deterministic_and_escape_their_labels() -> None:
    def draw() -> str:
        return bar_chart("<b>throughput</b>", ["c=1", '<script>alert("x")</script>'],
                         [Series("p50", (1.0, 2.0)), Series("p99", (3.0, None))], unit="ms")

    assert draw() == draw()
    svg = draw()
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&lt;b&gt;throughput&lt;/b&gt;" in svg
    assert len(re.findall(r'<rect class="bar"', svg)) == 3 and "n/a" in svg  # a missing value is not a zero bar
    assert 'data-series="p99" data-value="3.0"' in svg


def test_bar_heights_are_proportional_to_their_values() -> None:
    svg = bar_chart("t", ["a", "b"], [Series("s", (100.0, 50.0))], unit="x")
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]*height="([\d.]+)"', svg)]
    assert abs(heights[0] - 2 * heights[1]) < 0.2


def test_a_histogram_draws_one_bar_per_bin() -> None:
    bins = histogram_bins([0.1, 0.2, 0.2, 0.3, 0.9])
    svg = histogram("latency", bins, unit="s")
    assert len(re.findall(r'<rect class="bar"', svg)) == len(bins)
    assert [int(v) for v in re.findall(r'data-value="(\d+)"', svg)] == [b.count for b in bins]
