"""The server-side chart builder draws from data (no hand-made images)."""

from __future__ import annotations

import re

import pytest

from federation.templatetags import svgchart


def test_a_step_series_is_drawn_through_every_point_and_scaled_to_the_axes():
    chart = svgchart.Chart(title="spent", series=[svgchart.Series("spent", [(0, 0.0), (1, 1.0), (2, 3.0)], step=True)], y_max=4.0)
    svg = svgchart.render(chart)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    d = re.search(r'<path d="([^"]+)"', svg).group(1)
    coords = [tuple(map(float, p.split(","))) for p in re.findall(r"[ML]([\d.]+,[\d.]+)", d)]
    # Step: each new value starts at the next x, at the previous y; y grows upwards.
    assert len(coords) == 5
    assert coords[0][0] == svgchart.MARGIN_LEFT
    assert coords[-1][0] == svgchart.WIDTH - svgchart.MARGIN_RIGHT
    assert coords[1][1] == coords[0][1] and coords[2][1] < coords[1][1] and coords[4][1] < coords[2][1]


def test_an_empty_chart_says_so_and_infinite_values_are_left_out():
    assert "No data yet." in svgchart.render(svgchart.Chart(title="t", series=[]))
    svg = svgchart.render(svgchart.Chart(title="t", series=[svgchart.Series("s", [(0, 1.0), (1, float("inf"))])]))
    assert "nan" not in svg and "inf" not in svg


def test_text_is_escaped():
    svg = svgchart.render(svgchart.Chart(title="<script>", series=[svgchart.Series("<b>", [(0, 1.0), (1, 2.0)])]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<b>" not in svg


def test_nice_ticks_cover_the_range_with_round_steps():
    assert svgchart.nice_ticks(0, 8) == [0, 2, 4, 6, 8]
    assert svgchart.nice_ticks(0, 0.83) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_the_budget_bar_splits_spent_cost_and_rest_and_flags_overspend():
    bar = svgchart.budget_bar(spent=2.0, cost=1.0, budget=8.0, width=320)
    assert 'class="bar-spent" x="0" y="0" width="80"' in bar and 'class="bar-cost" x="80" y="0" width="40"' in bar
    over = svgchart.budget_bar(spent=7.0, cost=3.0, budget=8.0, width=320)
    assert 'class="budget-bar-svg over"' in over and 'width="40"' in over  # clipped to the bar


def test_a_series_with_intervals_is_drawn_with_a_band_polygon_around_its_line():
    band = [(1, 0.6, 0.8), (2, 0.7, 0.9), (3, 0.75, 0.95)]
    chart = svgchart.Chart(title="acc", series=[svgchart.Series("accuracy", [(1, 0.7), (2, 0.8), (3, 0.85)], band=band)], y_max=1.0)
    svg = svgchart.render(chart)
    polygon = re.search(r'<polygon class="band" points="([^"]+)"', svg)
    assert polygon is not None
    coords = [tuple(map(float, p.split(","))) for p in polygon.group(1).split()]
    assert len(coords) == 6  # upper edge left to right, lower edge back
    line = [tuple(map(float, p.split(","))) for p in re.findall(r"[ML]([\d.]+,[\d.]+)", re.search(r'<path d="([^"]+)"', svg).group(1))]
    for (x, y), upper, lower in zip(line, coords[:3], reversed(coords[3:])):
        assert upper[0] == x == lower[0] and upper[1] < y < lower[1]  # SVG y grows downwards
    # No interval, no band; a non-finite bound is left out rather than drawn.
    assert "<polygon" not in svgchart.render(svgchart.Chart(title="acc", series=[svgchart.Series("a", [(1, 0.7), (2, 0.8)])]))
    svg = svgchart.render(svgchart.Chart(title="acc", series=[svgchart.Series("a", [(1, 0.7)], band=[(1, float("nan"), 0.9)])]))
    assert "<polygon" not in svg and "nan" not in svg


def test_a_band_widens_the_y_axis_to_fit_the_interval():
    chart = svgchart.Chart(title="t", series=[svgchart.Series("s", [(0, 1.0), (1, 1.0)], band=[(0, 0.5, 2.5), (1, 0.5, 2.5)])], y_min=None)
    labels = [float(v) for v in re.findall(r'text-anchor="end">([\d.]+)<', svgchart.render(chart))]
    assert min(labels) <= 0.5 and max(labels) >= 2.5


def test_the_interval_bar_shades_the_interval_and_marks_the_value():
    svg = svgchart.interval_bar(value=0.8, low=0.7, high=0.9, width=322)
    xs = sorted({float(p.split(",")[0]) for p in re.search(r'<polygon class="band" points="([^"]+)"', svg).group(1).split()})
    assert xs == [pytest.approx(1 + 0.7 * 320), pytest.approx(1 + 0.9 * 320)]
    assert 'x1="257"' in svg and "95% interval 70.0% to 90.0%" in svg
