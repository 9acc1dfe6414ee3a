"""The server-side chart builder draws from data (no hand-made images)."""

from __future__ import annotations

import re

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
